"""Tests of ``codec.metrics`` and ``tokenwave eval-codec`` (``codec.evaluate``).

Light on purpose: the untrained ``tiny-16k`` model, three 2 s speech-like files. The Opus and
Codec2 baselines run when their command-line tools are installed (Debian/Ubuntu:
``apt-get install -y opus-tools codec2``) and are skipped otherwise.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("pesq", reason="needs the eval extra (pip install 'tokenwave[eval]')")
pytest.importorskip("pystoi", reason="needs the eval extra (pip install 'tokenwave[eval]')")
pytest.importorskip("matplotlib", reason="needs the eval extra (pip install 'tokenwave[eval]')")

from codec import evaluate, metrics
from codec.cli import main

SR = 16_000
HAVE_OPUS = bool(shutil.which("opusenc") and shutil.which("opusdec"))
HAVE_CODEC2 = bool(shutil.which("c2enc") and shutil.which("c2dec"))
INSTALL = "apt-get install -y opus-tools codec2"


def speech(seconds: float = 2.0, seed: int = 0, f0: float = 120.0) -> np.ndarray:
    """Speech-like float32 ``[N]`` at 16 kHz, peak 0.5: a gliding voiced source with harmonics
    shaped by two formants, syllable-rate loudness (4 Hz) and a little noise."""
    n = round(seconds * SR)
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    pitch = f0 + 25.0 * np.sin(2 * np.pi * 0.7 * t) + 3.0 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    voiced = np.zeros(n)
    for h in range(1, 40):
        f = h * f0
        formant = 1.0 / (1.0 + ((f - 700.0) / 300.0) ** 2) + 0.4 / (1.0 + ((f - 1800.0) / 400.0) ** 2)
        voiced += (formant + 0.05) / h**0.5 * np.sin(h * phase + 0.3 * h)
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t), 0.0, None) ** 0.6
    x = envelope * voiced / np.abs(voiced).max() + 0.01 * rng.standard_normal(n)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def with_noise(x: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(x.size)
    noise *= np.sqrt(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2)) * 10 ** (-snr_db / 20)
    return (x + noise).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Metrics


def test_identical_signals_score_perfectly():
    x = speech()
    s = metrics.score(x, x)
    assert 4.5 <= s["pesq"] <= 4.65
    assert s["stoi"] > 0.999
    assert s["si_sdr"] > 80
    assert s["log_mel"] == pytest.approx(0.0, abs=1e-12)
    assert s["mcd"] == pytest.approx(0.0, abs=1e-9)


def test_scores_get_worse_as_noise_grows():
    x = speech(seed=3)
    scores = [metrics.score(x, with_noise(x, snr)) for snr in (30, 15, 5, -5)]
    for higher_is_better in ("pesq", "stoi", "si_sdr"):
        values = [s[higher_is_better] for s in scores]
        assert all(a > b for a, b in itertools.pairwise(values)), (higher_is_better, values)
    for lower_is_better in ("log_mel", "mcd"):
        values = [s[lower_is_better] for s in scores]
        assert all(a < b for a, b in itertools.pairwise(values)), (lower_is_better, values)
    assert scores[0]["pesq"] < 4.5 and scores[0]["si_sdr"] == pytest.approx(30, abs=0.5)


def test_si_sdr_and_mcd_ignore_gain_and_pairs_are_cut_to_equal_length():
    x = speech(seed=4)
    assert metrics.si_sdr(x, 0.25 * x) > 80
    assert metrics.mcd(x, 0.25 * x) == pytest.approx(0.0, abs=1e-9)  # c0 (level) is excluded
    assert metrics.log_mel_distance(x, 0.25 * x) == pytest.approx(math.log(4), rel=1e-6)
    assert metrics.log_mel_distance(x, np.concatenate([x, np.ones(800, np.float32)])) == pytest.approx(0.0, abs=1e-12)


def test_undefined_metrics_are_nan_with_a_warning():
    x = speech(seed=5)
    with pytest.warns(metrics.MetricWarning, match="BufferTooShort"):
        assert math.isnan(metrics.pesq_wb(x[:2000], x[:2000]))  # under 1/4 s
    with pytest.warns(metrics.MetricWarning, match="silent"):
        assert math.isnan(metrics.pesq_wb(np.zeros(SR), np.zeros(SR)))
    with pytest.warns(metrics.MetricWarning, match="STOI"):
        assert math.isnan(metrics.stoi(x[:3000], x[:3000]))  # too few frames
    bad = x.copy()
    bad[10] = np.nan
    with pytest.warns(metrics.MetricWarning, match="NaN"):
        assert all(math.isnan(v) for v in metrics.score(x, bad).values())


def test_limit_spreads_over_the_split():
    assert evaluate.spread(list(range(10)), 3) == [0, 3, 6]
    assert evaluate.spread(list(range(4)), 10) == [0, 1, 2, 3]
    assert evaluate.spread(list(range(4)), None) == [0, 1, 2, 3]
    items = [("a", i) for i in range(10)] + [("b", i) for i in range(2)] + [("c", i) for i in range(20)]
    chosen = evaluate.spread(items, 7, key=lambda item: item[0])
    assert chosen == [("a", 0), ("a", 3), ("a", 6), ("b", 0), ("b", 1), ("c", 0), ("c", 10)]


def test_summary_means_compare_the_same_files():
    systems = [evaluate.System("x", "1", 1.0), evaluate.System("y", "2", 2.0)]
    rows = []
    for system, pesq in (("x", [2.0, 3.0, 4.0]), ("y", [1.0, None, 1.5])):
        for i, value in enumerate(pesq):
            rows.append({"system": system, "bitrate": "1" if system == "x" else "2", "file": f"f{i}", "seconds": 2.0,
                         "bytes": 250, "payload_bytes": 200, "pesq": value, "stoi": 0.9, "si_sdr": 1.0,
                         "log_mel": 1.0, "mcd": 1.0})
    x, y = evaluate.summarise(rows, systems)
    assert x["pesq"] == pytest.approx(3.0) and y["pesq"] == pytest.approx(1.25)  # f1 left out of both
    assert (x["pesq_files"], x["pesq_nan"], y["pesq_nan"], x["stoi_files"]) == (2, 0, 1, 3)
    assert x["kbps"] == pytest.approx(1.0) and x["payload_kbps"] == pytest.approx(0.8)


def test_ogg_packet_bytes_leaves_out_headers_and_framing():
    def page(packets: list[bytes]) -> bytes:
        lacing = b"".join(bytes([255] * (len(p) // 255) + [len(p) % 255]) for p in packets)
        return b"OggS" + bytes(22) + bytes([len(lacing)]) + lacing + b"".join(packets)

    data = page([b"OpusHead" + bytes(11)]) + page([b"OpusTags" + bytes(40)]) + page([bytes(15), bytes(300), bytes(7)])
    assert evaluate.ogg_packet_bytes(data) == 322


# --------------------------------------------------------------------------------------------
# eval-codec end to end


def make_manifest(folder: Path, count: int = 3) -> Path:
    rows = []
    for i in range(count):
        name = f"spk{i}/utt{i}.wav"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(folder / name, speech(2.0, seed=i, f0=110.0 + 40 * i), SR)
        rows.append({"audio": name, "text": "a test sentence", "speaker": f"spk{i}", "duration": 2.0, "sample_rate": SR})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One ``eval-codec --baselines`` run on three files at 1.5 and 6 kbps: (exit code, out, stdout)."""
    root = tmp_path_factory.mktemp("eval")
    manifest = make_manifest(root)
    out = root / "results"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["eval-codec", "--model", "tiny-16k", "--manifest", str(manifest), "--split", "all",
                     "--bitrates", "1.5,6", "--baselines", "--out", str(out)])
    return code, out, stdout.getvalue()


def test_eval_codec_writes_table_jsonl_and_plot(evaluated):
    code, out, stdout = evaluated
    assert code == 0
    table = (out / "results.md").read_text()
    assert "| system | nominal | real kbps |" in table
    assert "| tiny-16k | 1.5 kbps |" in table and "| tiny-16k | 6 kbps |" in table
    assert "| tiny-16k | 6 kbps |" in stdout
    assert (out / "quality_vs_bitrate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = read_rows(out)
    ours = [r for r in rows if r["type"] == "file" and r["system"] == "tiny-16k"]
    assert sorted((Path(r["file"]).name, r["bitrate"]) for r in ours) == sorted(
        (f"utt{i}.wav", b) for i in range(3) for b in ("1.5", "6"))
    for r in ours:
        assert r["seconds"] == pytest.approx(2.0)
        assert r["kbps"] == pytest.approx(r["bytes"] * 8 / 2.0 / 1000)
        assert r["payload_kbps"] == pytest.approx(float(r["bitrate"]), rel=0.05)  # 50 Hz x 10 bits x K, ~no slack
        for name in metrics.METRICS:
            assert r[name] is None or math.isfinite(r[name])
        assert r["log_mel"] > 0 and r["mcd"] > 0  # the untrained model does not reproduce its input

    summaries = {(r["system"], r["bitrate"]): r for r in rows if r["type"] == "summary"}
    assert summaries[("tiny-16k", "6")]["files"] == 3
    assert summaries[("tiny-16k", "6")]["pesq"] == pytest.approx(
        np.mean([r["pesq"] for r in ours if r["bitrate"] == "6"]))

    books = {r["bitrate"]: r for r in rows if r["type"] == "codebooks"}
    assert [len(books["1.5"]["levels"]), len(books["6"]["levels"])] == [3, 12]
    assert 3 * 100 <= books["6"]["frames"] <= 3 * 102  # 50 Hz (+ the padded last frame)
    for level in books["6"]["levels"]:
        assert 0 < level["usage"] <= 1 and 1 <= level["perplexity"] <= 1024


@pytest.mark.skipif(not HAVE_OPUS, reason=f"opusenc/opusdec not installed ({INSTALL})")
def test_opus_baseline(evaluated):
    _, out, _ = evaluated
    rows = [r for r in read_rows(out) if r["system"] == "opus"]
    files = [r for r in rows if r["type"] == "file"]
    assert sorted({r["bitrate"] for r in files}) == ["12", "6", "8"] and len(files) == 9
    for r in files:
        nominal = float(r["bitrate"])
        assert r["payload_kbps"] == pytest.approx(nominal, rel=0.05)  # hard CBR
        assert nominal < r["kbps"] < nominal + 3  # plus Ogg framing and headers
    summary = {r["bitrate"]: r for r in rows if r["type"] == "summary"}
    assert summary["12"]["pesq"] > 3.0 and summary["12"]["stoi"] > 0.9
    assert summary["12"]["pesq"] >= summary["6"]["pesq"] - 0.1


@pytest.mark.skipif(not HAVE_CODEC2, reason=f"c2enc/c2dec not installed ({INSTALL})")
def test_codec2_baseline(evaluated):
    _, out, _ = evaluated
    rows = [r for r in read_rows(out) if r["system"] == "codec2"]
    files = [r for r in rows if r["type"] == "file"]
    assert sorted({r["bitrate"] for r in files}) == ["1600", "3200", "700C"] and len(files) == 9
    real = {"3200": 3.2, "1600": 1.6, "700C": 0.8}  # 700C: 28-bit frames stored in 4 bytes
    for r in files:
        assert r["kbps"] == pytest.approx(real[r["bitrate"]], rel=0.03)
    summary = {r["bitrate"]: r for r in rows if r["type"] == "summary"}
    assert summary["3200"]["pesq"] > 1.5 and summary["3200"]["stoi"] > 0.7


def test_missing_tools_are_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "_which", lambda name: None)
    manifest = make_manifest(tmp_path, count=1)
    code = main(["eval-codec", "--model", "tiny-16k", "--manifest", str(manifest), "--split", "all",
                 "--bitrates", "3", "--baselines", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0
    assert "opus-tools" in err and "apt-get install codec2" in err
    assert {r["system"] for r in read_rows(tmp_path / "out")} - {None} == {"tiny-16k"}


def test_errors_are_one_line(tmp_path, capsys):
    manifest = make_manifest(tmp_path, count=1)
    args = ["eval-codec", "--model", "tiny-16k", "--manifest", str(manifest), "--split", "all"]
    assert main(args + ["--bitrates", "0.7", "--out", str(tmp_path / "a")]) == 2
    assert "no bitrate 0.7" in capsys.readouterr().err
    assert main(["eval-codec", "--manifest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "b")]) == 2
    assert "cannot read manifest" in capsys.readouterr().err
    assert main(args + ["--split", "unseen", "--out", str(tmp_path / "c")]) == 2
    assert "no recordings in split 'unseen'" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "results.md").write_text("old")
    assert main(args + ["--out", str(tmp_path / "d")]) == 2
    assert "use --force" in capsys.readouterr().err


def test_coding_option_sets_the_token_files_coding(tmp_path, capsys):
    manifest = make_manifest(tmp_path, count=1)
    args = ["eval-codec", "--model", "tiny-16k", "--manifest", str(manifest), "--split", "all", "--bitrates", "6"]
    payload = {}
    for coding in ("packed", "range"):
        assert main(args + ["--coding", coding, "--out", str(tmp_path / coding)]) == 0
        summary = next(r for r in read_rows(tmp_path / coding) if r["type"] == "summary")
        payload[coding] = summary["payload_kbps"]
        assert f"coding `{coding}`" in (tmp_path / coding / "results.md").read_text()
    assert payload["packed"] == pytest.approx(6.0, rel=0.1)  # 10 bits a code, plus chunk framing
    assert payload["range"] != payload["packed"]
    capsys.readouterr()
    assert main(args + ["--coding", "context", "--out", str(tmp_path / "context")]) == 2
    assert "ships no context tables" in capsys.readouterr().err


def test_unreadable_file_is_reported_and_the_rest_scored(tmp_path, capsys):
    manifest = make_manifest(tmp_path, count=1)
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    with manifest.open("a") as f:
        f.write(json.dumps({"audio": "broken.wav", "text": "x", "speaker": "spk9"}) + "\n")
    code = main(["eval-codec", "--model", "tiny-16k", "--manifest", str(manifest), "--split", "all",
                 "--bitrates", "3", "--out", str(tmp_path / "out")])
    assert code == 1
    assert "broken.wav" in capsys.readouterr().err
    rows = read_rows(tmp_path / "out")
    assert [r["type"] for r in rows if r["type"] in ("file", "error")] == ["file", "error"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "1 failure" in (tmp_path / "out" / "results.md").read_text()
