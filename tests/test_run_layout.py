"""One run layout: every file a real run leaves has a name the layout module gives, the engine's
paths are exactly those names, and no other module spells a run file's name."""

from __future__ import annotations

import re
from pathlib import Path

from api_schemas import run_layout
from api_schemas.run_layout import RunLayout
from api_schemas.spec import JobSpec
from worker.engine.data import DataConfig
from worker.engine.imp import IMPRun
from worker.engine.paths import RunPaths

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api_schemas", "store", "service", "worker", "reports", "client")
#: A file name of a run as a string literal: "rounds.json", "ticket.sparse.safetensors", ...
RUN_FILE = re.compile(
    r"""["'](?:[\w./{}-]*/)?(?:manifest|rounds|spec|metrics|plan)\.json["']"""
    r"""|["'](?:[\w./{}-]*/)?(?:ticket|mask|trained|dense|init|rewind|checkpoint)"""
    r"""(?:\.sparse)?\.safetensors["']|["']model\.onnx["']|["']report\.(?:html|png)["']"""
)


def _names(layout: RunLayout, rounds: int, controls: tuple[str, ...]) -> set[str]:
    names = {
        layout.spec,
        layout.rounds,
        layout.manifest,
        layout.ticket,
        layout.final_mask,
        layout.final_trained,
        layout.dense,
        layout.ticket_sparse,
        layout.trained_sparse,
        layout.onnx,
        layout.init,
        layout.rewind,
    }
    for k in range(rounds + 1):
        names |= {layout.mask(k), layout.trained(k), layout.metrics(k), layout.round_plan(k)}
        for control in controls:
            names |= {layout.mask(k, control), layout.trained(k, control)}
            names |= {layout.metrics(k, control)}
    return names


def test_every_file_of_a_real_run_is_named_by_the_layout(tmp_path: Path) -> None:
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "mlp", "hidden_sizes": [16]},
            "dataset": {
                "uri": "synthetic://?classes=3&shape=1,4,4&train=120&test=30",
                "validation_size": 30,
            },
            "training": {"batch_size": 10, "steps": "12it", "eval_every": "6it"},
            "pruning": {"rounds": 1, "controls": ["random_reinit", "random_prune"]},
            "replicates": 2,
        }
    )
    IMPRun(spec, tmp_path, DataConfig(roots=(tmp_path,))).run()
    controls = ("random_reinit", "random_prune")
    allowed = _names(RunLayout(), 1, controls) | _names(RunLayout().replicate(1), 1, controls)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    stacks = {n for n in written if re.fullmatch(r"(replicates/1/)?rounds/\d/stack-\w+\.\w+", n)}
    assert written - stacks <= allowed, sorted(written - stacks - allowed)
    manifest = run_layout.Manifest.read(tmp_path / run_layout.MANIFEST)
    assert {e.name for e in manifest.artifacts} == written - {run_layout.MANIFEST}
    assert manifest.model.num_classes == 3 and manifest.summary.replicates == 2


def test_the_engines_paths_are_the_layouts_names(tmp_path: Path) -> None:
    paths, names = RunPaths(tmp_path), RunLayout()
    for r in (0, 2):
        p, n = paths.replicate(r), names.replicate(r)
        assert p.mask(3, "random_prune") == tmp_path / n.mask(3, "random_prune")
        assert p.trained(0) == tmp_path / n.trained(0)
        assert p.checkpoint(1, "random_reinit") == tmp_path / n.checkpoint(1, "random_reinit")
        assert p.stack_checkpoint(2, "ab12") == tmp_path / n.stack_checkpoint(2, "ab12")
        assert (p.ticket, p.onnx, p.rewind) == tuple(
            tmp_path / x for x in (n.ticket, n.onnx, n.rewind)
        )
    assert names.replicate(2).mask(0) == "replicates/2/rounds/0/mask.safetensors"


def test_no_other_module_names_a_run_file() -> None:
    offenders = []
    for package in PACKAGES:
        for source in (ROOT / package).rglob("*.py"):
            if source == ROOT / "api_schemas" / "run_layout.py":
                continue
            for number, line in enumerate(source.read_text().splitlines(), 1):
                if RUN_FILE.search(line) and "examples=" not in line:
                    offenders.append(f"{source.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
