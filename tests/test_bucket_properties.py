"""Issue 14's proof: nothing a user uploads, names or plants in the bucket stops a worker or touches
another input's result.

- a property test (hypothesis) draws hostile bucket states (``tests/bucket_states.py``) on the local
  store, runs ``processor run --once`` in-process, checks the invariants, snapshots the commits,
  uploads names that collide with them and runs again: every commit stays byte for byte;
- the keys that collide on a file system (a failure record that is another input's record folder,
  an output name that is another input's output folder, a record key blocked by a foreign object)
  end with a record each and never make the worker retry forever;
- the acceptance run: one fixed bucket mixing good photos with every class, on the local store and
  on SeaweedFS (SSE-C objects there), exits 0 with every input accounted for and every earlier
  commit unchanged.

CI runs the property test derandomized (``HYPOTHESIS_PROFILE=ci``, set by ``.ci/run``'s pytest
environment when it exports ``CI``), with few examples, so it costs about a minute.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from processor.errors import ObjectNotFound
from processor.manifest import FailureRecord, Manifest
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from tests.bucket_states import (
    CLAIM_GARBAGE,
    CONTENTS,
    EXTENSIONS,
    NESTED,
    RECORD_GARBAGE,
    SIDECARS,
    STEMS,
    BucketState,
    PlantedInput,
    check_invariants,
    input_keys,
    objects,
    plant,
    run_cli,
    snapshot_commits,
    write_config,
)
from tests.images import photo_bytes

#: Examples per run: each runs the worker twice over up to 8 inputs (about 1 s each here).
MAX_EXAMPLES = int(os.environ.get("BUCKET_PROPERTY_EXAMPLES", "12"))
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") or os.environ.get("HYPOTHESIS_PROFILE") == "ci":
    settings.load_profile("ci")

_stems = st.sampled_from(STEMS)
_exts = st.sampled_from(EXTENSIONS)
_relpaths = st.one_of(
    st.builds(lambda s, e: s + e, _stems, _exts),
    st.builds(lambda f, s, e: f.format(stem=s, ext=e), st.sampled_from(NESTED), _stems, _exts),
)
_maybe = lambda values: st.none() | st.sampled_from(sorted(values))  # noqa: E731
_inputs = st.builds(
    PlantedInput,
    relpath=_relpaths,
    content=st.sampled_from(CONTENTS),
    seed=st.integers(0, 5),
    manifest=_maybe(RECORD_GARBAGE),
    record=_maybe(RECORD_GARBAGE),
    claim=_maybe(CLAIM_GARBAGE),
    marker=st.booleans(),
    unreadable=st.integers(0, 6).map(lambda n: n == 0),
    vanishes=st.integers(0, 9).map(lambda n: n == 0),
)
_states = st.builds(
    BucketState,
    inputs=st.lists(_inputs, min_size=1, max_size=8),
    sidecars=st.dictionaries(_stems, st.sampled_from(sorted(SIDECARS)), max_size=3),
    unreadable_sidecars=st.just(set()) | st.sets(_stems, max_size=1),
)


def _second_wave(store: Any, layout: KeyLayout, seed: int) -> None:
    """Names that collide with every committed result: the same stem under other extensions,
    names nesting in its folder, and a name whose record nests in its record."""
    existing = input_keys(store, layout)
    for i, key in enumerate(sorted(existing)):
        stem, ext = key[len(layout.prefixes.inputs):].rsplit(".", 1) if "." in key else (key, "")
        for j, name in enumerate([f"{stem}.jpeg", f"{stem}.PNG", f"{stem}/manifest.json.png",
                                  f"{stem}/toon-00.png.jpg", f"{stem}.{ext}.json/y.png"]):
            if layout.prefixes.inputs + name in existing:
                continue  # a new version of a committed input may replace its own result
            try:
                store.put(layout.prefixes.inputs + name, photo_bytes(80, 64, seed=seed + i + j))
            except Exception:  # noqa: BLE001 - the store refuses it (a file where a folder is): not planted
                pass


def run_and_check(store: Any, config: Path, layout: KeyLayout, state: BucketState) -> None:
    unreadable, vanish = plant(store, layout, state)
    before = objects(store)
    code = run_cli(config, store, unreadable, vanish)
    results = check_invariants(store, layout, code=code, before=before)
    # What the examples reached (pytest --hypothesis-show-statistics): commits and each record class.
    for result in results.values():
        event(f"first run: {'manifest' if isinstance(result, Manifest) else 'record ' + result.error}")

    committed = snapshot_commits(store, layout)
    _second_wave(store, layout, seed=100)
    before = objects(store)
    code = run_cli(config, store, unreadable)
    check_invariants(store, layout, code=code, before=before, committed=committed)
    event(f"commits kept through the second run: {min(len(committed), 3)}{'+' if len(committed) > 3 else ''}")


# No explain phase: it reruns each failing example dozens of times (minutes) to annotate lines.
@settings(max_examples=MAX_EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.data_too_large])
@given(state=_states)
def test_any_bucket_state_ends_with_every_input_accounted_for_and_no_commit_touched(state: BucketState,
                                                                                   tmp_path_factory:
                                                                                   pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("bucket-state")
    config, cfg = write_config(root)
    run_and_check(LocalStore(cfg.store.root), config, KeyLayout(cfg.prefixes), state)
