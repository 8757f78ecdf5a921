"""``bench/model_sizes.py`` counts the published architectures: its counts equal the parameter
counts the model cards and papers publish for the components checked here."""

from __future__ import annotations

from bench.model_sizes import FP16_BYTES, GIB, main


def test_counts_match_the_published_architectures(capsys):
    rows = {f.name.split(" (")[0]: f for f in main([])}
    assert rows["SD 1.x"].components == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert rows["SD 2.1"].components["unet"] == 865_910_724
    assert rows["SDXL base 1.0"].components["unet"] == 2_567_463_684
    assert rows["FLUX.1-dev"].components["transformer"] == 11_901_408_320
    assert rows["SD 3 medium"].components["text_encoder_3"] == 4_762_310_656  # T5 v1.1 XXL's encoder
    assert rows["FLUX.1-dev"].license == "non-commercial" and rows["FLUX.1-schnell"].license == "apache-2.0"
    flux = rows["FLUX.1-dev"]
    assert flux.fp16_gib == flux.params * FP16_BYTES / GIB
    out = capsys.readouterr().out
    assert out.startswith("| family |") and "| FLUX.1-dev | not yet | 16.87 B | 31.4 GiB |" in out
