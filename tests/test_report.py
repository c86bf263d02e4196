"""gvgap.report / gvgap.figures on a synthetic run directory (tmp_path)."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from test_plots import synthetic

from gvgap import figures, report, report_doc
from gvgap.errors import UserError


def fake_module(fail: bool = False) -> types.ModuleType:
    """An experiment module with CLAIM, DESIGN_NOTE and a ``plot(df, ax)``."""
    mod = types.ModuleType("fake_h6")
    mod.CLAIM = "Online beats offline when the verifier is simple."
    mod.NOTES = "H6"
    mod.DESIGN_NOTE = (
        "Same pairs for\n   every pipeline; exact soft RL (:func:`gvgap.learners.rlhf`).\n\n"
        "Arms, each on :mod:`gvgap.sweep` runs:\n\n"
        "- ``dpo``: offline, *against* the isomorphic\n  control;\n"
        "- ``rlhf``: online, r* and π* exact.\n"
    )

    def plot(df: pd.DataFrame, ax=None):
        if fail:
            raise RuntimeError("boom")
        sub = df[df["metric"] == "J_norm"]
        ax.plot(sub["n_pairs"], sub["value"], "o")
        ax.set(xlabel="n", ylabel="J_norm", title="own plot")
        return ax

    mod.plot = plot
    return mod


def make_run_dir(root: Path, *, extras: bool = True) -> Path:
    """results.parquet (h6-shaped + a bare-metric experiment), verdicts, verify, manifest."""
    root.mkdir(parents=True, exist_ok=True)
    h6 = synthetic()
    bare = pd.DataFrame(
        {
            "run_id": ["c0", "c1"],
            "experiment": "c_bare",
            "vocab": [2, 3],
            "seed": [0, 1],
            "instance_seed": [5, 6],
            "pipeline": "",
            "metric": "gibbs_error",
            "value": [1e-15, 3e-15],
        }
    )
    pd.concat([h6, bare], ignore_index=True).to_parquet(root / "results.parquet", index=False)
    if extras:
        verdicts = {
            "h6_gap": {
                "claim": "gap claim",
                "verdict": "supported",
                "effect": 0.3,
                "ci_low": 0.2,
                "ci_high": 0.4,
                "n_runs": 32,
                "robust": True,
                "detail": "headline H=3",
            },
            "h1": {
                "claim": "h1 claim",
                "hypothesis": "H1: samples carry information.",
                "verdict": "against",
                "prediction_held": False,
                "effect": -0.1,
                "ci_low": -0.2,
                "ci_high": -0.05,
                "n_runs": 20,
                "positive_control": {"effect": 0.3, "ci_low": 0.2, "ci_high": 0.4},
                "paper_position": "against (data processing)",
                "consistent_with_paper": "yes",
                "seeds": 14,
                "power": 0.83,
                "robustness": [
                    {"override": {"vocab": 4, "horizon": 3}, "verdict": "against",
                     "effect": -0.2, "ci_low": -0.3, "ci_high": -0.1, "seeds": 14,
                     "power": 0.83},
                    {"override": {"beta": 0.1}, "verdict": "inconclusive", "effect": 0.01,
                     "ci_low": -0.1, "ci_high": 0.1, "seeds": 14, "power": 0.83},
                ],
                "stability": [{"seed_start": 0, "effect": -0.1, "ci_low": -0.2,
                               "ci_high": -0.05, "seeds": 14}],
            },
        }  # fmt: skip
        (root / "verdicts.json").write_text(json.dumps(verdicts))
        checks = [
            {
                "name": "gibbs identity",
                "item": "1",
                "instances": 50,
                "max_error": 1e-14,
                "tolerance": 1e-9,
                "passed": True,
            }
        ]
        (root / "verify.json").write_text(json.dumps(checks))
        (root / "manifest.json").write_text(json.dumps({"gvgap_version": "0.1.0", "quick": True}))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_run_dir(tmp_path_factory.mktemp("run"))
    mp = pytest.MonkeyPatch()
    mp.setattr(report, "_modules", lambda: {"h6_gap": fake_module()})
    try:
        report.write_report(root)
    finally:
        mp.undo()
    return root


def test_against_is_not_coloured_as_a_failure(run_dir: Path) -> None:
    """A verdict is on the hypothesis: "against" shares the neutral colour of "supported"
    and is never given the failure (FAIL) style."""
    page = (run_dir / "report.html").read_text()
    assert '<td class="v-against">against</td>' in page
    css = report_doc.CSS
    fail = re.search(r"\.v-FAIL\{([^}]*)\}", css).group(1)
    against = re.search(r"[.,]v-against[^{]*\{([^}]*)\}", css).group(1)
    supported = re.search(r"\.v-supported[^{]*\{([^}]*)\}", css).group(1)
    assert against == supported and against != fail


def test_report_files_and_self_contained_html(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    assert "data:image/png;base64," in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", page)
    assert "<link" not in page and "<script" not in page
    assert "supported" in page and "gibbs identity" in page


def test_report_markdown_content(run_dir: Path) -> None:
    md = (run_dir / "report.md").read_text()
    for text in (
        "## Verdicts",
        "| h6_gap | gap claim | supported | – | – | 0.3 [0.2, 0.4] | – | 32 | – | – |",
        "| h1 | H1: samples carry information. | against | against (data processing) | yes "
        "| -0.1 [-0.2, -0.05] | 0.3 [0.2, 0.4] | 14 | 0.83 | 1 of 2 |",
        "verdict on the hypothesis",
        "Legend: the verdict is on the hypothesis",
        "### Re-checks and seed blocks",
        "| vocab = 4, horizon = 3 | against | -0.2 [-0.3, -0.1] | 14 | 0.83 |",
        "| beta = 0.1 | inconclusive | 0.01 [-0.1, 0.1] | 14 | 0.83 |",
        "| 0 | -0.1 [-0.2, -0.05] | 14 |",
        "Online beats offline",
        "**Design.** Same pairs for every pipeline; exact soft RL (`gvgap.learners.rlhf`).",
        "- `dpo`: offline, *against* the isomorphic control;",
        "figures/h6_gap.png",
        "figures/h6_gap__advantage_vs_gap.png",
        "| cell | role | contrast a − b | metric | mean [95% CI] | seeds |",
        "| horizon = 3, n_pairs = 10, rm_class = linear | compared | rlhf − dpo | J |",
        "### c_bare",
        "gibbs_error",
    ):
        assert text in md, text
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (run_dir / link).is_file()
    prose = re.sub(r"```.*?```", "", md, flags=re.S)  # outside fenced blocks
    assert ":func:" not in prose and ":mod:" not in prose and "``" not in prose


def test_report_html_renders_markup_and_lists(run_dir: Path) -> None:
    """Docstring markup is rendered, never shown raw: lists as <ul><li>, code, emphasis,
    roles as code; the symbols r* and π* stay as they are."""
    page = (run_dir / "report.html").read_text()
    assert "<ul><li><strong>Design.</strong>" not in page  # the lead opens the paragraph
    assert "<li><code>dpo</code>: offline, <em>against</em> the isomorphic control;</li>" in page
    assert "<li><code>rlhf</code>: online, r* and π* exact.</li>" in page
    assert "<code>gvgap.learners.rlhf</code>" in page and "<code>gvgap.sweep</code>" in page
    text = re.sub(r"<[^>]+>", "", page.split("<body>")[1])
    for raw in (":func:", ":mod:", "``", "*against*", "**"):
        assert raw not in text, raw
    assert "<em>consistent with paper</em>" in page  # the legend


def test_docstring_blocks_hand_written() -> None:
    """Paragraphs, a list with a continuation line, a literal block; inline markup."""
    text = "First\nline.\n\nItems:\n\n- a ``x``\n  more\n* b\n\nCode::\n\n    y = 1\n\nEnd."
    assert report_doc.blocks(text) == [
        ("p", "First line."),
        ("p", "Items:"),
        ("ul", ["a ``x`` more", "b"]),
        ("p", "Code:"),
        ("pre", "y = 1"),
        ("p", "End."),
    ]
    assert report_doc._inline("*a* r* 2*3 **b** :class:`~m.C` `c`") == (
        "<em>a</em> r* 2*3 <strong>b</strong> <code>m.C</code> <code>c</code>"
    )
    assert report_doc.md_inline(":data:`X` and ``y``") == "`X` and `y`"


def test_figures_have_sidecars(run_dir: Path) -> None:
    index = json.loads((run_dir / "figures" / "index.json").read_text())
    names = [e["name"] for e in index["experiments"]["h6_gap"]]
    assert names[0] == "h6_gap"  # the experiment's own plot first
    assert {
        "h6_gap__advantage_vs_gap",
        "h6_gap__phase",
        "h6_gap__sample_complexity",
        "h6_gap__equivalence",
    } <= set(names)
    side = json.loads((run_dir / "figures" / "h6_gap__phase.json").read_text())
    assert {"git_sha", "gvgap_version", "created", "seeds", "meta"} <= set(side)
    assert side["seeds"] == [0, 1, 2, 3]
    assert side["meta"]["config"]["grid"]["n_pairs"] == [10, 100]
    assert side["meta"]["results_sha256"] == index["results_sha256"]
    assert (run_dir / "figures" / "h6_gap__phase.pdf").stat().st_size > 0


def test_write_plots_other_dir_and_failure_recorded(tmp_path: Path, monkeypatch) -> None:
    root = make_run_dir(tmp_path / "run", extras=False)
    monkeypatch.setattr(report, "_modules", lambda: {"h6_gap": fake_module(fail=True)})
    monkeypatch.setattr(figures, "generic_specs", lambda eid, df: [])  # only the failing plot
    with pytest.warns(UserWarning, match="boom"):
        paths = report.write_plots(root, tmp_path / "out")
    assert [p.name for p in paths] == ["index.json"]
    assert paths[0].parent == tmp_path / "out" and not (root / "figures").exists()
    with pytest.warns(UserWarning, match="boom"):
        md_path, html_path = report.write_report(root)  # draws into root/figures
    md = md_path.read_text()
    assert "Figure h6_gap failed: RuntimeError: boom" in md
    assert "Skipped: no verdicts.json" in md and "No manifest" in md
    assert (root / "figures" / "index.json").is_file() and html_path.is_file()


def test_bad_run_dirs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing"):
        report.write_report(tmp_path / "missing")
    with pytest.raises(UserError, match=r"results\.parquet"):
        report.write_plots(tmp_path)
    (tmp_path / "results.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="cannot read"):
        report.write_report(tmp_path)
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "results.parquet")
    with pytest.raises(UserError, match="lacks columns"):
        report.write_report(tmp_path)


def test_save_figure_writes_png_pdf_json(tmp_path: Path) -> None:
    fig = Figure()
    fig.subplots().plot([0, 1], [0, 1])
    paths = figures.save_figure(fig, tmp_path / "f", "a b/c", meta={"seeds": np.arange(2)})
    assert [p.name for p in paths] == ["a_b_c.png", "a_b_c.pdf", "a_b_c.json"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    side = json.loads(paths[2].read_text())
    assert side["seeds"] == [0, 1] and side["files"] == ["a_b_c.png", "a_b_c.pdf"]
    assert not list((tmp_path / "f").glob(".*tmp"))


@pytest.mark.parametrize("fails", ["savefig", "sidecar", "report_md"])
def test_report_on_a_full_disk_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """Issue 19: ``gvgap report`` on a full disk left a 0-byte ``figures/.*.png.tmp``. The
    disk fills (ENOSPC, after some bytes were written) while a figure, its sidecar or the
    report is written: one UserError naming the file and reason, and no temporary file in
    the run directory."""
    import errno

    root = make_run_dir(tmp_path / "run")
    monkeypatch.setattr(report, "_modules", lambda: {"h6_gap": fake_module()})
    full = OSError(errno.ENOSPC, "No space left on device")
    if fails == "savefig":

        def savefig(self, fname, *args, **kwargs):
            Path(fname).write_bytes(b"\x89PNG partial")
            raise full

        monkeypatch.setattr(Figure, "savefig", savefig)
    else:
        real_write_text = Path.write_text
        target = ".json." if fails == "sidecar" else ".report.md."  # a temporary's name

        def write_text(self, data, *args, **kwargs):
            if target in self.name and self.name.endswith(".tmp"):
                real_write_text(self, data[:10], *args, **kwargs)
                raise full
            return real_write_text(self, data, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(UserError, match="No space left on device"):
        report.write_report(root)
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
