"""Built-in voices: the shipped prompt files, lookup by name, ``tokenwave voices`` and ``--add``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from codec.cli import main as cli_main
from tts.errors import TTSError
from tts.voices import VOICES_DIR, get_voice, list_voices, save_voice

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _only_shipped_voices(monkeypatch):
    monkeypatch.delenv("TOKENWAVE_VOICES", raising=False)


def test_shipped_voices_are_small_16k_prompts_with_metadata():
    voices = {v.name: v for v in list_voices()}
    assert {"kathleen", "ljspeech"} <= set(voices)
    for voice in voices.values():
        info = sf.info(voice.audio)
        assert info.samplerate == 16_000 and info.channels == 1 and info.format == "FLAC"
        assert 3.0 <= info.duration <= 10.0 and abs(info.duration - voice.seconds) < 0.01
        assert voice.audio.stat().st_size < 200_000
        assert voice.transcript and voice.speaker and voice.source and voice.source_file
        assert voice.licence in ("CC0-1.0", "public-domain")
        wav = voice.load()
        assert wav.ndim == 1 and np.sqrt(np.mean(wav**2)) > 0.005  # not silence
    assert voices["kathleen"].licence == "CC0-1.0" and voices["ljspeech"].licence == "public-domain"
    # nothing but the prompt files (and their README) is shipped
    assert {p.suffix for p in VOICES_DIR.iterdir()} <= {".flac", ".json", ".md"}


def test_shipped_voices_come_from_the_dev_split():
    manifest = SHARED / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(f"{manifest} is not available")
    from codec.data import read_manifest, select_split

    dev = {r.path.resolve(): r for r in select_split(read_manifest(manifest), "dev")}
    for voice in list_voices():
        source = (REPO / voice.source_file).resolve()
        assert source in dev, f"{voice.name}: {voice.source_file} is not in the dev split"
        assert dev[source].text == voice.transcript and dev[source].speaker == voice.speaker


def test_get_voice_unknown_name_lists_the_voices():
    assert get_voice("kathleen").name == "kathleen"
    with pytest.raises(TTSError, match="no voice named 'nobody'; available: kathleen, ljspeech"):
        get_voice("nobody")


def test_voices_command_lists_them(capsys):
    assert cli_main(["voices"]) == 0
    out = capsys.readouterr().out
    assert "kathleen" in out and "ljspeech" in out and "CC0-1.0" in out
    assert cli_main(["voices", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"] for r in rows} >= {"kathleen", "ljspeech"}
    assert all(r["seconds"] > 3 for r in rows)


def test_add_voice_from_any_recording(tmp_path, monkeypatch, capsys):
    rate = 44_100
    t = np.arange(int(4.0 * rate)) / rate
    stereo = 0.2 * np.stack([np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 300 * t)]).T
    source = tmp_path / "mine.wav"
    sf.write(source, stereo, rate)
    folder = tmp_path / "voices"
    assert cli_main(["voices", "--add", "me", "--prompt", str(source), "--prompt-text", "Hello.", "--licence",
                     "CC0-1.0", "--dir", str(folder)]) == 0
    assert "voice 'me' written" in capsys.readouterr().out
    info = json.loads((folder / "me.json").read_text())
    assert info["transcript"] == "Hello." and info["licence"] == "CC0-1.0" and abs(info["seconds"] - 4.0) < 0.01
    assert sf.info(folder / "me.flac").samplerate == 16_000 and sf.info(folder / "me.flac").channels == 1
    assert cli_main(["voices", "--add", "me", "--prompt", str(source), "--dir", str(folder)]) == 2
    assert "use --force" in capsys.readouterr().err

    monkeypatch.setenv("TOKENWAVE_VOICES", str(folder))
    assert get_voice("me").transcript == "Hello."
    assert [v.name for v in list_voices()][:3] == ["kathleen", "ljspeech", "me"]


def test_save_voice_rejects_bad_names_and_long_audio(tmp_path):
    with pytest.raises(TTSError, match="voice names"):
        save_voice(tmp_path, "../evil", np.zeros(16_000, np.float32), 16_000)
    with pytest.raises(TTSError, match="at most 10 s"):
        save_voice(tmp_path, "long", np.zeros(16_000 * 11, np.float32), 16_000)
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "broken.flac").write_bytes(b"")
    from tts.voices import read_voice

    with pytest.raises(TTSError, match="cannot read voice file"):
        read_voice(tmp_path / "broken.json")
