"""``processor finetune`` end to end on the tiny random-weight SD model, on the CPU.

Training reads images from the bucket (or a folder), writes the LoRA and its record, and the LoRA
then renders through ``processor run --once`` as a style's ``lora:``. A run killed with SIGKILL
after a checkpoint resumes from it and computes the same losses as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from processor.cli.main import main
from processor.config import Img2ImgStyle, PrefixSettings
from processor.finetune.checkpoint import checkpoint_steps
from processor.finetune.location import Location
from processor.finetune.record import LORA_NAME, RECORD_NAME, TrainingRecord
from processor.manifest import Manifest
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from testkit.images import photo_bytes
from testkit.models.caption import CAPTION_WORDS
from testkit.waits import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
#: Small but real: 64 px (an 8x8 latent), 8 steps, a checkpoint every 2.
TRAIN = ["--resolution", "64", "--steps", "8", "--checkpoint-every", "2", "--keep-checkpoints", "2",
         "--validation-steps", "2", "--validation-images", "2", "--lr", "5e-3", "--seed", "3"]
#: Seconds the killed run may take to reach its first checkpoint (model load included): a hang guard.
CHECKPOINT_WAIT_S = HANG_GUARD_S


def write_config(tmp_path: Path, styles: dict | None = None) -> Path:
    cfg = {"store": {"kind": "local", "root": str(tmp_path / "bucket")}, "models": {"device": "cpu"},
           "pipeline": {"contact_sheet_height": 32}, "metrics": {"port": 0}}
    if styles:
        cfg |= {"styles": styles, "run": {"styles": list(styles), "poll_interval_s": 0.05}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def training_files(count: int = 3) -> dict[str, bytes]:
    files = {}
    for i in range(count):
        files[f"toy{i}.png"] = photo_bytes(96, 80, fmt="PNG", seed=10 + i)
        files[f"toy{i}.txt"] = f"a plush toy number {i} on a table".encode()
    return files


def finetune(config: Path, *args: str) -> int:
    return main(["finetune", "--config", str(config), "-q", *args])


@pytest.fixture(scope="module")
def trained(tiny_sd, tmp_path_factory):
    """One run from the bucket's training/toys/ into its models/loras/toys/ (the defaults), with
    one file that is not an image and one photo without a caption file."""
    tmp = tmp_path_factory.mktemp("finetune")
    config = write_config(tmp)
    store = LocalStore(tmp / "bucket")
    for name, body in training_files().items():
        store.put("training/toys/" + name, body)
    store.put("training/toys/notes.jpg", b"just some text, not a photo")
    store.put("training/toys/uncaptioned.png", photo_bytes(96, 80, fmt="PNG", seed=99))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = finetune(config, "--name", "toys", "--base", str(tiny_sd), *TRAIN)
    assert code == 0
    record = TrainingRecord.model_validate_json(store.get("models/loras/toys/" + RECORD_NAME).body)
    return {"tmp": tmp, "config": config, "store": store, "record": record, "stdout": out.getvalue()}


def test_training_writes_the_lora_the_record_and_checkpoints(trained, tiny_sd):
    store, record = trained["store"], trained["record"]
    assert record.steps_done == 8 and len(record.loss) == 8
    assert all(math.isfinite(x) and x > 0 for x in record.loss)
    assert record.base.model == str(tiny_sd) and record.base.pipeline == "StableDiffusionPipeline"
    hp = record.hyperparameters
    assert (hp.steps, hp.rank, hp.resolution, hp.seed, hp.lr) == (8, 4, 64, 3, 5e-3)
    assert hp.prediction_type == "epsilon" and hp.mixed_precision == "float32" and not hp.gradient_checkpointing
    assert [d.key for d in record.dataset] == [f"training/toys/toy{i}.png" for i in range(3)]
    for item in record.dataset:
        assert item.sha256 == hashlib.sha256(store.get(item.key).body).hexdigest()
        assert item.caption.startswith("a plush toy number")
    skipped = {s.key: s.reason for s in record.skipped}
    assert "text, not an image" in skipped["training/toys/notes.jpg"]
    assert "no caption file training/toys/uncaptioned.txt" in skipped["training/toys/uncaptioned.png"]
    assert record.device == "cpu" and record.seed == 3 and record.finished
    assert {"torch", "diffusers", "peft", "transformers"} <= set(record.versions.model_dump())
    assert record.checkpoints == [2, 4, 6] and record.resumed_from == []
    assert sorted(record.validation_loss) == [0, 2, 4, 6, 8]
    assert record.lora == "models/loras/toys/" + LORA_NAME

    out = Location.of(store, "models/loras/toys/")
    assert checkpoint_steps(out) == [4, 6]  # --keep-checkpoints 2 pruned step 2
    for step in (4, 6):
        sheet = out.get(f"checkpoints/step-{step:06d}/validation.jpg")
        assert sheet[:3] == b"\xff\xd8\xff"  # a JPEG contact sheet beside each checkpoint
    assert out.get("validation.jpg")[:3] == b"\xff\xd8\xff"


def test_the_lora_loads_with_diffusers_load_lora_weights(trained, tiny_sd):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, use_safetensors=True)
    path = trained["tmp"] / "bucket" / "models/loras/toys" / LORA_NAME
    pipe.load_lora_weights(str(path), adapter_name="toys")
    assert pipe.get_active_adapters() == ["toys"]
    assert any("lora_B" in name for name, _ in pipe.unet.named_parameters())


def test_the_printed_style_renders_through_processor_run_and_changes_the_pixels(trained, tiny_sd, tmp_path):
    snippet = yaml.safe_load(trained["stdout"])
    style = snippet["styles"]["toys"]
    assert style["lora"]["path"] == "bucket:models/loras/toys/"
    Img2ImgStyle.model_validate(style)
    common = {"variants": 1, "steps": 4, "seed": 1, "rounds": [{"strength": 0.6}], "trigger": "cartoon"}
    plain = {k: v for k, v in style.items() if k != "lora"} | common
    # The same bucket the LoRA was written to: the worker reads it from the bucket key.
    tmp = trained["tmp"]
    config = write_config(tmp_path, {"toys": style | common, "plain": plain})
    text = yaml.safe_load(config.read_text())
    text["store"]["root"] = str(tmp / "bucket")
    text["models"]["cache_dir"] = str(tmp_path / "cache")
    config.write_text(yaml.safe_dump(text))
    store = trained["store"]
    store.put("inputs/bear.png", photo_bytes(80, 64, fmt="PNG", seed=5))
    assert main(["run", "--once", "--config", str(config), "--metrics-port", "0"]) == 0
    layout = KeyLayout(PrefixSettings())
    manifest = Manifest.model_validate_json(store.get(layout.for_input("inputs/bear.png").manifest).body)
    by_style = {v.style: v for v in manifest.variants}
    assert by_style["toys"].parameters["lora"] == {"path": "bucket:models/loras/toys/", "scale": 1.0, "revision": None}
    assert "lora" not in by_style["plain"].parameters
    assert by_style["toys"].sha256 != by_style["plain"].sha256
    # Copied once from the bucket into the model cache, named by key and ETag.
    assert list((tmp_path / "cache" / "processor-loras").rglob(LORA_NAME))


def test_a_rerun_of_a_finished_run_changes_nothing(trained, tiny_sd, capsys):
    store = trained["store"]
    before = store.head("models/loras/toys/" + LORA_NAME).etag
    assert finetune(trained["config"], "--name", "toys", "--base", str(tiny_sd), *TRAIN) == 0
    assert "already trained (8 steps)" in capsys.readouterr().err
    assert store.head("models/loras/toys/" + LORA_NAME).etag == before


def test_killed_mid_run_resume_continues_to_the_same_losses(trained, tiny_sd, tmp_path):
    """SIGKILL after the first checkpoint; ``--resume`` ends at the same step count with the losses
    of the uninterrupted run (same images, same seed: the checkpoint restores every random state)."""
    images = tmp_path / "images"
    images.mkdir()
    for name, body in training_files().items():
        (images / name).write_bytes(body)
    out = tmp_path / "out"
    config = write_config(tmp_path)
    command = [sys.executable, "-m", "processor", "finetune", "--config", str(config), "-q", "--name", "toys",
               "--base", str(tiny_sd), "--images", str(images), "--out", str(out), *TRAIN]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "checkpoints" / "step-000002" / "state.json"
    deadline = time.monotonic() + CHECKPOINT_WAIT_S
    try:
        while not first.exists():
            assert proc.poll() is None, f"training exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within the wait"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / RECORD_NAME).exists(), "the run finished before it was killed; the test proves nothing"
    killed_at = checkpoint_steps(Location.of(LocalStore(out), ""))[-1]
    assert 2 <= killed_at < 8

    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = TrainingRecord.model_validate_json((out / RECORD_NAME).read_bytes())
    assert record.steps_done == 8 and len(record.loss) == 8
    assert record.resumed_from == [killed_at]
    # Exactly the uninterrupted run's numbers: the checkpoint restored weights, optimizer and RNG.
    assert record.loss == trained["record"].loss
    assert record.validation_loss == trained["record"].validation_loss
    assert (out / LORA_NAME).stat().st_size > 0
    assert f"resumed from step {killed_at}" in resumed.stderr


def test_loss_falls_when_the_model_overfits_one_image(tiny_sd, tmp_path):
    """One image, one caption, a high learning rate: the loss on fixed noise and timesteps (the
    record's ``validation_loss``; the per-step loss draws one random timestep, too noisy to compare)
    falls at every checkpoint."""
    images = tmp_path / "one"
    images.mkdir()
    (images / "toy.png").write_bytes(photo_bytes(64, 64, fmt="PNG", seed=1))
    config = write_config(tmp_path)
    out = tmp_path / "out"
    assert finetune(config, "--name", "one", "--base", str(tiny_sd), "--images", str(images), "--out", str(out),
                    "--captions", "none", "--prompt", "a toy", "--min-images", "1", "--resolution", "64",
                    "--steps", "20", "--checkpoint-every", "5", "--validation-steps", "0", "--lr", "5e-2",
                    "--rank", "8", "--no-flip") == 0
    record = TrainingRecord.model_validate_json((out / RECORD_NAME).read_bytes())
    assert len(record.loss) == 20 and all(math.isfinite(x) for x in record.loss)
    assert sorted(record.validation_loss) == [0, 5, 10, 15, 20]
    curve = [record.validation_loss[step] for step in sorted(record.validation_loss)]
    assert all(later < earlier for earlier, later in itertools.pairwise(curve)), curve
    assert curve[-1] < 0.95 * curve[0], curve


# --------------------------------------------------------------------------- bad training data


@pytest.fixture
def bad_folder(tmp_path) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_bytes(b"hello, I am a text file")
    (folder / "tiny.png").write_bytes(photo_bytes(32, 24, fmt="PNG", seed=1))
    cut = photo_bytes(96, 80, seed=2)
    (folder / "truncated.jpg").write_bytes(cut[: len(cut) // 3])
    (folder / "good.png").write_bytes(photo_bytes(96, 80, fmt="PNG", seed=3))
    return folder


def test_too_few_usable_images_lists_every_skipped_file(bad_folder, tmp_path, tiny_sd, capsys):
    config = write_config(tmp_path)
    code = finetune(config, "--name", "bad", "--base", str(tiny_sd), "--images", str(bad_folder), "--out",
                    str(tmp_path / "out"), "--captions", "none", "--prompt", "a toy")
    err = capsys.readouterr().err
    assert code == 3
    assert "1 usable training image under local folder" in err and "at least 3 needed (--min-images)" in err
    for name, why in (("empty.jpg", "empty"), ("text.png", "text, not an image"), ("tiny.png", "min_side"),
                      ("truncated.jpg", "truncated")):
        line = next((line for line in err.splitlines() if line.strip().startswith(name + ":")), None)
        assert line is not None and why in line.lower(), (name, err)
    assert not (tmp_path / "out" / LORA_NAME).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--captions", "none"], "--captions none uses --prompt for every image"),
        (["--mode", "subject"], "--mode subject needs --instance-prompt"),
        (["--captions", "files"], "no caption file good.txt"),
        (["--images", "./no-such-folder"], "no such folder"),
        (["--name", "../up"], "--name '../up'"),
        (["--resolution", "100"], "--resolution 100: a multiple of 8"),
        (
            ["--mode", "subject", "--instance-prompt", "sks toy", "--prior-images", "2"],
            "--prior-images needs --class-prompt",
        ),
    ],
)
def test_bad_options_and_data_say_what_to_change(bad_folder, tmp_path, tiny_sd, capsys, args, message):
    config = write_config(tmp_path)
    base = ["--name", "bad", "--base", str(tiny_sd), "--images", str(bad_folder), "--out", str(tmp_path / "out"),
            "--min-images", "1"]
    # Later flags win in argparse: each case overrides what it tests.
    assert finetune(config, *base, *args) == 3
    assert message in capsys.readouterr().err


def test_an_empty_bucket_prefix_says_where_it_looked(tmp_path, tiny_sd, capsys):
    config = write_config(tmp_path)
    assert finetune(config, "--name", "nothing", "--base", str(tiny_sd), "--captions", "none", "--prompt", "x") == 3
    err = capsys.readouterr().err
    assert "0 usable training images under local directory" in err and "training/nothing/" in err
    assert "No files were found there" in err


def test_a_checkpoint_of_other_settings_is_not_resumed(trained, tiny_sd, tmp_path, capsys):
    """Continuing someone else's run would mix two trainings into one LoRA: refuse, name the change."""
    store = trained["store"]
    code = finetune(trained["config"], "--name", "toys", "--base", str(tiny_sd), *TRAIN, "--rank", "8")
    assert code == 3
    err = capsys.readouterr().err
    assert "rank 4 -> 8" in err and "--fresh" in err
    assert store.head("models/loras/toys/" + RECORD_NAME)


def test_the_training_benchmark_runs_on_the_cpu(tiny_sd, capsys):
    """``bench.finetune --tiny``: the command docs/finetune.md quotes for GPU figures, smoke-run here."""
    from bench import finetune as bench_finetune
    from bench.common import parse_report

    results = bench_finetune.main(["--tiny", "--model", str(tiny_sd), "--steps", "2", "--warmup", "1"])
    printed = parse_report(capsys.readouterr().out)
    assert results["steps_timed"] == 2 and results["mixed_precision"] == "float32"
    for on in ("on", "off"):  # both configurations in one run, and their ratio
        assert float(printed[f"checkpointing_{on}_s_per_1000_steps"]) > 0
        assert math.isfinite(results[f"checkpointing_{on}_final_loss"])
    assert float(printed["ratio_time_on_over_off"]) > 0


def test_captions_auto_runs_the_products_captioner(tiny_sd, tiny_blip, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for i in range(2):
        (images / f"toy{i}.png").write_bytes(photo_bytes(80, 64, fmt="PNG", seed=30 + i))
    config = write_config(tmp_path)
    text = yaml.safe_load(config.read_text())
    # caption.mode none (rendering uncaptioned) still captions training images, with the caption model.
    text["caption"] = {"mode": "none", "caption_model": str(tiny_blip), "cache_dir": str(tmp_path / "cache")}
    config.write_text(yaml.safe_dump(text))
    out = tmp_path / "out"
    assert finetune(config, "--name", "auto", "--base", str(tiny_sd), "--images", str(images), "--out", str(out),
                    "--captions", "auto", "--min-images", "2", "--resolution", "64", "--steps", "1",
                    "--validation-images", "0") == 0
    record = TrainingRecord.model_validate_json((out / RECORD_NAME).read_bytes())
    assert record.hyperparameters.captions.value == "auto"
    vocabulary = set(CAPTION_WORDS)
    for item in record.dataset:
        assert item.caption and set(item.caption.replace(",", " ").split()) <= vocabulary, item.caption


def test_subject_mode_with_prior_preservation(tiny_sd, tmp_path):
    images = tmp_path / "bear"
    images.mkdir()
    (images / "bear.png").write_bytes(photo_bytes(80, 64, fmt="PNG", seed=40))
    config = write_config(tmp_path)
    out = tmp_path / "out"
    args = ["--name", "bear", "--base", str(tiny_sd), "--images", str(images), "--out", str(out), "--mode", "subject",
            "--instance-prompt", "a photo of sks toy", "--class-prompt", "a photo of a toy", "--prior-images", "2",
            "--min-images", "1", "--resolution", "64", "--steps", "3", "--validation-steps", "2",
            "--checkpoint-every", "1000"]
    assert finetune(config, *args) == 0
    record = TrainingRecord.model_validate_json((out / RECORD_NAME).read_bytes())
    assert [d.caption for d in record.dataset] == ["a photo of sks toy"]
    assert [c.key for c in record.class_images] == ["class_images/0000.png", "class_images/0001.png"]
    for item in record.class_images:
        assert item.sha256 == hashlib.sha256((out / item.key).read_bytes()).hexdigest()
        assert (item.width, item.height) == (64, 64) and item.caption == "a photo of a toy"
    assert len(record.loss) == 3 and all(math.isfinite(x) for x in record.loss)
    snippet = yaml.safe_load(capture_snippet(config, args))
    assert snippet["styles"]["bear"]["prompt"] == "a photo of sks toy"


def capture_snippet(config: Path, args: list[str]) -> str:
    """What a rerun of a finished run prints (the snippet again, nothing retrained)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert finetune(config, *args) == 0
    return out.getvalue()


def test_a_bucket_lora_that_is_missing_names_the_key_and_the_fix(tmp_path):
    from processor.config import LoraSettings, ModelSettings
    from processor.errors import ConfigError, ModelUnavailableError
    from processor.models.loader import ModelLoader

    lora = LoraSettings(path="bucket:models/loras/nope/")
    loader = ModelLoader(ModelSettings(cache_dir=tmp_path / "cache"), store=lambda: LocalStore(tmp_path / "bucket"))
    with pytest.raises(ModelUnavailableError, match=r"no object models/loras/nope/pytorch_lora_weights\.safetensors"):
        loader.resolve_lora(lora)
    with pytest.raises(ConfigError, match="names a bucket key"):
        ModelLoader(ModelSettings()).resolve_lora(lora)


def test_a_terminal_gets_a_progress_bar_and_fresh_starts_over(tiny_sd, tmp_path):
    """On a TTY: a tqdm bar with the loss (no JSON step events). ``--fresh`` then discards the run's
    files (and only those) and trains again with other settings."""
    import fcntl
    import pty
    import struct
    import termios

    images = tmp_path / "images"
    images.mkdir()
    for name, body in training_files().items():
        (images / name).write_bytes(body)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    config = write_config(tmp_path)
    args = ["--name", "toys", "--base", str(tiny_sd), "--images", str(images), "--out", str(out),
            "--resolution", "64", "--steps", "3", "--checkpoint-every", "2", "--validation-images", "0"]
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.run([sys.executable, "-m", "processor", "finetune", "--config", str(config), *args],
                          env=os.environ | {"PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=follower,
                          timeout=300, check=False)
    os.close(follower)
    chunks = []
    with contextlib.suppress(OSError):  # EIO once the child's side is closed and drained
        while chunk := os.read(leader, 65536):
            chunks.append(chunk)
    os.close(leader)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, terminal[-2000:]
    assert "finetune toys" in terminal and "loss=" in terminal and "3/3" in terminal
    assert '"event": "finetune_step"' not in terminal

    assert finetune(config, *args, "--fresh", "--rank", "8") == 0
    record = TrainingRecord.model_validate_json((out / RECORD_NAME).read_bytes())
    assert record.hyperparameters.rank == 8 and record.resumed_from == [] and record.checkpoints == [2]
    assert (out / "notes.txt").read_text() == "mine"


def test_v_prediction_models_train_on_the_velocity_with_min_snr(tiny_sd, tmp_path):
    """An SD 2.x-v style scheduler (prediction_type v_prediction) with Min-SNR weighting."""
    import shutil

    model = tmp_path / "tiny-v"
    shutil.copytree(tiny_sd, model)
    scheduler = model / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps(json.loads(scheduler.read_text()) | {"prediction_type": "v_prediction"}))
    images = tmp_path / "images"
    images.mkdir()
    (images / "toy.png").write_bytes(photo_bytes(64, 64, fmt="PNG", seed=7))
    out = tmp_path / "out"
    assert finetune(write_config(tmp_path), "--name", "v", "--base", str(model), "--images", str(images), "--out",
                    str(out), "--captions", "none", "--prompt", "a toy", "--min-images", "1", "--resolution", "64",
                    "--steps", "3", "--validation-images", "0", "--snr-gamma", "5") == 0
    record = TrainingRecord.model_validate_json((out / RECORD_NAME).read_bytes())
    assert record.hyperparameters.prediction_type == "v_prediction" and record.hyperparameters.snr_gamma == 5
    assert len(record.loss) == 3 and all(math.isfinite(x) and x > 0 for x in record.loss)
