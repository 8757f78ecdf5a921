"""Draw the README's picture: synthetic toy photos beside what the shipped ``toon`` style makes of them.

    python scripts/readme_picture.py                  # writes docs/img/before-after.png
    python scripts/readme_picture.py --out /tmp/x.png

The photos are drawn from seeds (``bench.mask_scenes``: plush-like toys on a desk, a shelf and a
blanket), never taken from real photos, so the picture can be committed and redrawn anywhere.
They go through ``processor process --style toon`` with the repository's ``config.yaml``: the
same command a user runs, on the CPU, without model weights. Each row is one photo followed by
two of its variants; the strip is quantised to a palette so the PNG stays small.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.mask_scenes import make_scene  # noqa: E402 - after the repository root is importable

#: Where the README looks for the picture.
DEFAULT_OUT = ROOT / "docs" / "img" / "before-after.png"
#: (scene type, aspect, placement, seed) of each row: three backgrounds, three toy colours.
SCENES = (("floor", "4:3", 0, 3), ("shelf", "4:3", 1, 1), ("blanket", "4:3", 0, 2))
#: The toon variants shown beside each photo (their seeds differ: colours, smoothing, edges).
VARIANTS = ("toon-00.png", "toon-03.png")
#: Pixels: the long side of each synthetic photo, and the height of each tile in the strip.
PHOTO_LONG_SIDE = 480
TILE_HEIGHT = 180
#: Pixels between tiles, and the height of the caption band above each column.
GAP = 4
LABEL_HEIGHT = 18
#: Colours of the strip's palette: enough for the toon's flat colours and the photos' gradients.
PALETTE_COLOURS = 160
#: Bytes: the most the picture may weigh (the README loads it on every visit).
MAX_BYTES = 200_000


def draw_photos(folder: Path) -> list[Path]:
    """Write one synthetic photo per ``SCENES`` row into ``folder``; their paths in row order."""
    paths = []
    for i, (kind, aspect, placement, seed) in enumerate(SCENES):
        path = folder / f"toy-{i}-{kind}.png"
        make_scene(kind, aspect, placement, seed, long_side=PHOTO_LONG_SIDE).image.save(path)
        paths.append(path)
    return paths


def cartoonize(photos: Path, out: Path) -> None:
    """Run the shipped toon style over ``photos`` through the CLI, as a user would."""
    cmd = [sys.executable, "-m", "processor", "process", str(photos), "--out", str(out),
           "--style", "toon", "--config", str(ROOT / "config.yaml"), "--quiet", "--log-level", "WARNING"]
    subprocess.run(cmd, check=True, cwd=ROOT, env=_env())


def _env() -> dict[str, str]:
    """This checkout's ``processor`` first, whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def tile(path: Path) -> Image.Image:
    image = Image.open(path).convert("RGB")
    width = round(image.width * TILE_HEIGHT / image.height)
    return image.resize((width, TILE_HEIGHT), Image.Resampling.LANCZOS)


def strip(photos: list[Path], results: Path) -> Image.Image:
    """Rows of photo + variants under a caption band ("photo", "toon-00", ...)."""
    rows = [[tile(p)] + [tile(results / p.stem / name) for name in VARIANTS] for p in photos]
    widths = [max(row[c].width for row in rows) for c in range(len(rows[0]))]
    canvas = Image.new("RGB", (sum(widths) + GAP * (len(widths) + 1),
                               LABEL_HEIGHT + len(rows) * (TILE_HEIGHT + GAP) + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    labels = ["photo (synthetic)"] + [f"toon style, {Path(n).stem}" for n in VARIANTS]
    x = GAP
    for c, width in enumerate(widths):
        draw.text((x + 2, 3), labels[c], fill=(60, 60, 60))
        for r, row in enumerate(rows):
            canvas.paste(row[c], (x, LABEL_HEIGHT + GAP + r * (TILE_HEIGHT + GAP)))
        x += width + GAP
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the PNG to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        photos_dir, results = Path(tmp, "photos"), Path(tmp, "results")
        photos_dir.mkdir()
        photos = draw_photos(photos_dir)
        cartoonize(photos_dir, results)
        picture = strip(photos, results).quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT,
                                                  dither=Image.Dither.NONE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, optimize=True)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({picture.width}x{picture.height}, {size:,} bytes)")
    if size > MAX_BYTES:
        print(f"the picture is over {MAX_BYTES:,} bytes: lower TILE_HEIGHT or PALETTE_COLOURS", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
