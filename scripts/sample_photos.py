"""Write a few synthetic 'toy photos' into a folder, for the quickstart on a machine without photos."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from testkit.images import photo_bytes

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for i, (w, h) in enumerate([(640, 480), (480, 640), (800, 450)]):
    (out / f"toy-{i + 1}.jpg").write_bytes(photo_bytes(w, h, seed=i))
print(f"wrote 3 sample photos to {out}")
