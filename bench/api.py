"""What the HTTP API costs on top of the bucket, and the queue against the prototype's design.

Part 1, per store (``--store local|s3|both``): a real ``processor serve`` (subprocess, no worker),
``--clients`` concurrent clients doing ``--requests`` ``POST /v1/jobs`` (multipart, one small
JPEG) and then as many ``GET /v1/jobs/{id}``. In the same run, with the same concurrency and
the same photo: the store's own single PUT and GET, and the protocol's own calls in-process
(``BucketQueue.submit``: the photo and the rescan hint; ``BucketQueue.state``: a HEAD, three GETs
and, while the job is queued, one LIST of its done markers),
so the API's own share is what the HTTP figure adds to the in-process one.

Part 2 (``--e2e N``, local store): ``N`` requests of the prototype's ``POST
/generate_image_rest_direct`` from ``--clients`` clients, against (a) the prototype's design, a
synchronous FastAPI handler that runs the style inside the request (uvicorn, a process of its
own), and (b) ``processor serve`` over the bucket with ``--workers`` ``processor run`` daemons
(default 1; for the CPU style each computes ``run.cpu_workers`` items at once, default the node's
cores; for the diffusion style, ``--batch-inputs`` prepared inputs in one pipeline call, default 1),
started and idle before the clock starts, with the shipped settings (``E2E_CONFIG``).
Same style (``--style``: ``toon``, or ``sd``, a tiny random-weight diffusion model or ``--model``'s;
``--variants`` variants of ``--side`` px photos), same photos. Images per second and p50/p99 seconds to the
result for both, and where the queue's time goes, as means over its jobs (``breakdown_*``): from
POST to result (``post_to_result_s``), the part the job spent in the bucket (``in_bucket_s``:
input written to manifest committed, from the objects' own times), split into the wait for a
worker (``scan_wait_s``), ``compute_s`` (decode and style), ``encode_s`` and ``writes_s`` (outputs
put); the rest, ``api_notice_s``, is the API's (request, submit writes, noticing the manifest,
reading the outputs). And the CPU each design spends per request (``cpu_s_per_job_*``, user +
system seconds from ``/proc/<pid>/stat`` before and after the timed requests, over ``N``): ``bench``
is this process (the clients), ``server`` the prototype's process, ``api`` the ``processor
serve`` process, ``worker`` the daemon's main process and ``compute`` its compute processes.

    python -m bench.api --store both --clients 8 --requests 200 --e2e 40
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from bench.common import machine, report, s3_store, seaweedfs_server
from processor.config import Settings
from processor.queue.protocol import BucketQueue
from processor.queue.submit import Submission
from processor.store.base import ObjectStore
from processor.store.local import LocalStore
from testkit.api_service import TOKEN, serve, worker, write_env
from testkit.images import photo_bytes

DEFAULT_CLIENTS = 8
DEFAULT_REQUESTS = 200
DEFAULT_E2E = 40
#: The photo every request carries (a JPEG of this size, about 10 KB).
PHOTO_SIZE = (320, 240)
#: Part 2's configuration of the queue: the shipped defaults but for the style, the upload cap and
#: the inputs a diffusion style renders in one call (``--batch-inputs``).
E2E_CONFIG = """\
styles: {%(name)s: %(style)s}
run: {styles: [%(name)s], batch_inputs: %(batch)d}
pipeline: {mask: {onnx: null}}
metrics: {port: 0}
api: {max_upload_bytes: 50000000}
"""
#: Part 2's diffusion style (``--style sd``): a tiny random-weight SD 1.x model built from configs
#: and loaded through the production path; its steps and processing size.
SD_STEPS = 4
SD_SIZE = 64


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def timed(calls: int, clients: int, fn: Callable[[int], Any]) -> tuple[list[float], float]:
    """Run ``fn(i)`` for i < calls on ``clients`` threads: (each call's seconds, wall seconds)."""
    latencies = [0.0] * calls

    def one(i: int) -> None:
        started = time.perf_counter()
        fn(i)
        latencies[i] = time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(calls)))
    return latencies, time.perf_counter() - started


def summary(prefix: str, latencies: list[float], wall: float) -> dict[str, float]:
    return {f"{prefix}_per_s": len(latencies) / wall, f"{prefix}_p50_ms": 1000 * statistics.median(latencies),
            f"{prefix}_p99_ms": 1000 * percentile(latencies, 99)}


def overhead(kind: str, store: ObjectStore, env: dict[str, str], tmp: Path, clients: int, requests: int,
             settings: Settings) -> dict[str, float]:
    photo = photo_bytes(*PHOTO_SIZE)
    results: dict[str, float] = {}
    # The store alone: one PUT and one GET of the same photo, same concurrency.
    lat, wall = timed(requests, clients, lambda i: store.put(f"bench/raw/{i}.jpg", photo, content_type="image/jpeg"))
    results |= summary(f"{kind}_store_put", lat, wall)
    lat, wall = timed(requests, clients, lambda i: store.get(f"bench/raw/{i}.jpg"))
    results |= summary(f"{kind}_store_get", lat, wall)
    # The protocol in-process: what one submit and one status read cost in store requests.
    queue = BucketQueue.for_settings(store, settings)
    ids: list[str] = [""] * requests

    def submit_direct(i: int) -> None:
        ids[i] = queue.submit(Submission(image=photo, format="JPEG"))[0]

    lat, wall = timed(requests, clients, submit_direct)
    results |= summary(f"{kind}_jobqueue_submit", lat, wall)
    lat, wall = timed(requests, clients, lambda i: queue.state(ids[i]))
    results |= summary(f"{kind}_jobqueue_state", lat, wall)
    # The same through HTTP.
    with serve(env, tmp) as api:
        local = threading.local()

        def client() -> httpx.Client:
            if not hasattr(local, "c"):
                local.c = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
            return local.c

        api_ids: list[str] = [""] * requests

        def post(i: int) -> None:
            resp = client().post("/v1/jobs", files={"image": ("toy.jpg", photo)})
            assert resp.status_code == 202, resp.text
            api_ids[i] = resp.json()["id"]

        lat, wall = timed(requests, clients, post)
        results |= summary(f"{kind}_api_post", lat, wall)

        def get(i: int) -> None:
            resp = client().get(f"/v1/jobs/{api_ids[i]}")
            assert resp.status_code == 200, resp.text

        lat, wall = timed(requests, clients, get)
        results |= summary(f"{kind}_api_get", lat, wall)
    results[f"{kind}_api_post_over_jobqueue_p50_ms"] = (results[f"{kind}_api_post_p50_ms"]
                                                        - results[f"{kind}_jobqueue_submit_p50_ms"])
    results[f"{kind}_api_get_over_jobqueue_p50_ms"] = (results[f"{kind}_api_get_p50_ms"]
                                                       - results[f"{kind}_jobqueue_state_p50_ms"])
    return results


# --------------------------------------------------------------------------- part 2


class PrototypeRequest(BaseModel):
    """The prototype's request body."""

    initial_image: str
    prompt: str = ""
    negative_prompt: str = ""
    final_images_to_return: int = 1
    seed: int = 0


def prototype_app(settings: Settings, style_name: str) -> Any:
    """The prototype's design: the style runs inside a synchronous request handler. A diffusion
    engine's pipeline keeps its scheduler's state on the object, so two requests in it at once
    fail (``IndexError`` in the scheduler's step, seen with this very model): the handler holds a
    lock around the call, as a prototype serving one GPU must. The CPU style needs none."""
    from fastapi import FastAPI

    from processor.cli.compose import make_engine
    from processor.pipeline.decode import decode_image
    from processor.pipeline.encode import encode_png

    style = settings.styles[style_name]
    engine = make_engine(style_name, style)
    engine.setup()
    one_at_a_time = threading.Lock() if style.engine != "toon" else contextlib.nullcontext()
    app = FastAPI()

    def for_request(req: PrototypeRequest) -> Any:
        """The engine for the request's seed and variants, which the queue honours too: a diffusion
        engine derives it on its own pipeline; the toon style's engine has nothing to load."""
        own = style.model_copy(update={"seed": req.seed, "variants": req.final_images_to_return})
        if hasattr(engine, "derive"):
            return engine.derive(own)
        made = make_engine(style_name, own)
        made.setup()
        return made

    @app.post("/generate_image_rest_direct")
    def generate(req: PrototypeRequest) -> dict[str, list[str]]:  # sync: FastAPI runs it on its thread pool
        image = decode_image(base64.b64decode(req.initial_image), settings.pipeline.decode).image
        with one_at_a_time:
            variants = for_request(req)(image)[: req.final_images_to_return]
        return {"generated_images": [base64.b64encode(encode_png(v.image, v.parameters)).decode() for v in variants]}

    return app


def e2e_style(kind: str, variants: int, side: int, tmp: Path, *, model: str | None = None,
              steps: int = SD_STEPS, size: int = SD_SIZE) -> dict[str, Any]:
    """Part 2's style: ``toon`` (CPU) or ``sd``: ``model`` (a local diffusers SD 1.x folder), else a
    tiny diffusion model built under ``tmp``; ``steps`` per round at ``size`` px."""
    if kind == "toon":
        return {"engine": "toon", "variants": variants, "max_side": side}
    if model is None:
        from testkit.models.sd import build_sd

        model = str(build_sd(tmp / "tiny-sd"))
    return {"engine": "img2img", "model": model, "trigger": "cartoon, Pixar, 3D render", "steps": steps,
            "size": size, "variants": variants, "seed": 7}


def _prototype_process(style_kind: str, style: dict[str, Any], ready: Any) -> None:
    """The prototype server's process: its app on a listening socket, its URL sent on ``ready``
    once the style has loaded."""
    import uvicorn

    from processor.api.server import bind

    settings = Settings(styles={style_kind: style}, run={"styles": [style_kind]}, pipeline={"mask": {"onnx": None}})
    app = prototype_app(settings, style_kind)
    sock, url = bind("127.0.0.1", 0)
    ready.send(url)
    uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")).run(sockets=[sock])


@contextmanager
def prototype_server(style_kind: str, style: dict[str, Any], timeout_s: float = 300.0) -> Iterator[tuple[str, int]]:
    """The prototype in a process of its own, as it is deployed (the clients' threads then do not
    share its interpreter): its URL and process id, once its style has loaded."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    proc = context.Process(target=_prototype_process, args=(style_kind, style, sender), daemon=True)
    proc.start()
    try:
        if not receiver.poll(timeout_s):
            raise RuntimeError(f"the prototype server did not start within {timeout_s:.0f} s")
        yield receiver.recv(), proc.pid
    finally:
        proc.terminate()
        proc.join(timeout=20)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (``/proc/<pid>/stat``), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # After the command's closing parenthesis, field 3 (state) is index 0: utime and stime are 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (the worker's compute processes)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return found


def cpu_by_role(roles: dict[str, list[int]]) -> dict[str, float]:
    return {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in roles.items()}


def end_to_end(url: str, photos: list[bytes], clients: int, variants: int,
               roles: Callable[[], dict[str, list[int]]] = lambda: {}) -> dict[str, float]:
    """The timed requests; ``roles()`` names the processes (by role) whose CPU per request is reported."""
    local = threading.local()

    def one(i: int) -> None:
        if not hasattr(local, "c"):
            local.c = httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600)
        payload = {"initial_image": base64.b64encode(photos[i]).decode(), "prompt": "", "negative_prompt": "",
                   "final_images_to_return": variants, "seed": i}
        resp = local.c.post(url + "/generate_image_rest_direct", json=payload)
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["generated_images"]) == variants

    named = {"bench": [os.getpid()]} | roles()
    before = cpu_by_role(named)
    lat, wall = timed(len(photos), clients, one)
    after = cpu_by_role(named)
    cpu = {f"cpu_s_per_job_{role}": (after[role] - before[role]) / len(photos) for role in named}
    return {"images_per_s": len(photos) * variants / wall, "p50_s": statistics.median(lat),
            "p99_s": percentile(lat, 99), "mean_s": statistics.fmean(lat), **cpu,
            "cpu_s_per_job_total": sum(cpu.values())}


def compare(tmp: Path, clients: int, count: int, variants: int, side: int, workers: int,
            cpu_workers: int | None = None, style_kind: str = "toon", batch_inputs: int = 1,
            sd: dict[str, Any] | None = None) -> dict[str, Any]:
    """Part 2 (module docstring); ``sd``: ``e2e_style``'s model, steps and size for ``--style sd``."""
    style = e2e_style(style_kind, variants, side, tmp, **(sd or {}))
    photos = [photo_bytes(side, side * 3 // 4, seed=i) for i in range(count)]
    with prototype_server(style_kind, style) as (url, pid):
        proto = end_to_end(url, photos, clients, variants, lambda: {"server": [pid]})
    store_env = {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "e2e-bucket")}
    if cpu_workers is not None:
        store_env["PROCESSOR_RUN__CPU_WORKERS"] = str(cpu_workers)
    env = write_env(tmp, store_env, max_upload=50_000_000, config_name="e2e.yaml")
    # The queue as shipped: the test servers' faster polls and full scans cost CPU a deployment
    # does not spend, so only the style, the upload cap and the metrics port are set here (and
    # GrabCut for masks, as in the prototype's process: nothing here needs the segmenter's weights).
    (tmp / "e2e.yaml").write_text(E2E_CONFIG % {"name": style_kind, "style": json.dumps(style),
                                                "batch": batch_inputs})
    with serve(env, tmp) as api, ExitStack() as daemons:
        procs = [daemons.enter_context(worker(env, tmp)) for _ in range(workers)]
        _wait_for_workers(tmp, workers)

        def roles() -> dict[str, list[int]]:
            return {"api": [api.proc.pid], "worker": [p.pid for p in procs],
                    "compute": [c for p in procs for c in child_pids(p.pid)]}

        queued = end_to_end(api.url, photos, clients, variants, roles)
    out = {"style": style_kind} | {f"prototype_{k}": v for k, v in proto.items()} | {
        "queue_workers": workers, "queue_cpu_workers": cpu_workers or 0, "queue_batch_inputs": batch_inputs}
    out |= {f"queue_{k}": v for k, v in queued.items()}
    out["queue_over_prototype_images_per_s"] = queued["images_per_s"] / proto["images_per_s"]
    out |= {f"breakdown_{k}": v for k, v in breakdown(tmp / "e2e-bucket", queued["mean_s"]).items()}
    return out


def _wait_for_workers(tmp: Path, count: int, timeout_s: float = 120.0) -> None:
    """Until each daemon has set up and scanned once: the clock starts with the workers ready."""
    deadline = time.monotonic() + timeout_s
    while sum('"scanned"' in p.read_text(errors="replace") for p in tmp.glob("worker-*.log")) < count:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.1)


def breakdown(bucket: Path, post_to_result_s: float) -> dict[str, float]:
    """Mean seconds per job, from the bucket's objects: the input's and the manifest's modification
    times and the manifest's timings (module docstring)."""
    parts: dict[str, list[float]] = {"in_bucket_s": [], "scan_wait_s": [], "compute_s": [], "encode_s": [],
                                     "writes_s": []}
    for path in (bucket / "outputs").rglob("manifest.json"):
        manifest = json.loads(path.read_text())
        timings: dict[str, float] = manifest["timings"]
        in_bucket = path.stat().st_mtime - (bucket / manifest["source"]["key"]).stat().st_mtime
        compute = timings.get("decode", 0.0) + sum(v for k, v in timings.items() if k.startswith("style:"))
        busy = timings.get("download", 0.0) + compute + timings.get("encode", 0.0) + timings.get("upload", 0.0)
        parts["in_bucket_s"].append(in_bucket)
        parts["scan_wait_s"].append(max(0.0, in_bucket - busy))
        parts["compute_s"].append(compute)
        parts["encode_s"].append(timings.get("encode", 0.0))
        parts["writes_s"].append(timings.get("upload", 0.0))
    means = {k: statistics.fmean(v) if v else 0.0 for k, v in parts.items()}
    return {"post_to_result_s": post_to_result_s, **means, "api_notice_s": post_to_result_s - means["in_bucket_s"]}


def main(argv: Sequence[str] | None = None, *, server: Any = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--store", choices=["local", "s3", "both", "none"], default="both",
                        help="part 1 on these stores (none: only part 2)")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="POSTs (and GETs) per store")
    parser.add_argument("--e2e", type=int, default=DEFAULT_E2E,
                        help="requests of part 2 (prototype vs queue); 0 skips it")
    parser.add_argument("--style", choices=["toon", "sd"], default="toon",
                        help="part 2: the CPU toon style, or sd: a tiny random-weight SD 1.x img2img model "
                        f"({SD_STEPS} steps at {SD_SIZE} px) through the production loader")
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="part 2, --style sd: a local diffusers SD 1.x folder instead of the tiny model (the GPU "
                        "suite's build step makes the SD 1.5 architecture); both designs load it")
    parser.add_argument("--sd-steps", type=int, default=SD_STEPS, help="part 2, --style sd: steps per round")
    parser.add_argument("--sd-size", type=int, default=SD_SIZE, help="part 2, --style sd: the long side it runs at")
    parser.add_argument("--variants", type=int, default=2, help="part 2: variants per request")
    parser.add_argument("--side", type=int, default=256, help="part 2: photo width and the style's max_side")
    parser.add_argument("--workers", type=int, default=1, help="part 2: processor run daemons behind the queue "
                        "(each takes one item at a time, as one GPU does)")
    parser.add_argument("--cpu-workers", type=int, default=None,
                        help="part 2: each daemon's compute processes (run.cpu_workers; default: its own, the "
                        "node's cores; reported as 0)")
    parser.add_argument("--batch-inputs", type=int, default=1,
                        help="part 2: run.batch_inputs of the queue's daemons: prepared inputs a diffusion style "
                        "renders in one call (default 1, the shipped setting; the prototype cannot batch: each "
                        "request runs alone)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, Any] = machine() | {"clients": args.clients, "requests": args.requests}
    settings = Settings(styles={"toon": {"engine": "toon", "variants": 2, "max_side": 128}}, run={"styles": ["toon"]})
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        if args.store in ("local", "both"):
            root = tmp / "local-bucket"
            env = write_env(tmp, {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(root)},
                            max_upload=50_000_000)
            results |= overhead("local", LocalStore(root), env, tmp, args.clients, args.requests, settings)
        if args.store in ("s3", "both"):
            weed = stack.enter_context(seaweedfs_server(server))
            store = s3_store(weed)
            env = write_env(tmp, {"PROCESSOR_STORE__KIND": "s3", "PROCESSOR_STORE__BUCKET": store.bucket,
                                  "PROCESSOR_STORE__ENDPOINT_URL": weed.endpoint_url,
                                  "PROCESSOR_STORE__REGION": weed.region, "AWS_ACCESS_KEY_ID": weed.access_key,
                                  "AWS_SECRET_ACCESS_KEY": weed.secret_key}, max_upload=50_000_000)
            results |= overhead("s3", store, env, tmp, args.clients, args.requests, settings)
        if args.e2e:
            results |= compare(tmp, args.clients, args.e2e, args.variants, args.side, args.workers,
                               args.cpu_workers, args.style, args.batch_inputs,
                               {"model": args.model, "steps": args.sd_steps, "size": args.sd_size})
    report(results, as_json=args.json)
    return results


if __name__ == "__main__":
    main()
