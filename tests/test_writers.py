"""Output formats: parsed back with the srt and webvtt packages, and byte for byte equal to
openai-whisper's writers for the same result."""

import copy
import json
import sys

import pytest

from max_whisper.writers import FORMATS, format_timestamp, get_writer, render
from support import requires, requires_reference, requires_shared_audio, shared_clip

CLIP = "libri-1088-134315-0000.wav"  # 16 s, two segments with punctuation

# every subtitle layout openai-whisper supports; the width/count pair turns on its line breaking
SUBTITLE_OPTIONS = [
    {},
    {"highlight_words": True},
    {"max_line_width": 20, "max_line_count": 2},
    {"max_line_width": 42, "max_line_count": 1, "highlight_words": True},
    {"max_line_width": 30},
    {"max_words_per_line": 4},
]


@pytest.fixture(scope="module")
def results(models):
    """Two real results for one clip: segment-level only, and with word timings (the tests using it
    are marked requires_reference and requires_shared_audio)."""
    path = shared_clip(CLIP)
    plain = models.transcribe("tiny.en", "reference", path, temperature=0.0)
    words = models.transcribe("tiny.en", "reference", path, temperature=0.0, word_timestamps=True)
    assert len(plain["segments"]) >= 2 and all(s["words"] for s in words["segments"])
    return {"plain": plain, "words": words}


def synthetic_result() -> dict:
    """Edge cases real speech rarely hits: hours, tabs, an arrow, non-ASCII, an empty segment."""
    return {
        "text": " Grüße\tà tous --> 東京 done",
        "language": "en",
        "segments": [
            {
                "id": 0,
                "seek": 0,
                "start": 0.0,
                "end": 1.5,
                "text": " Grüße\tà tous",
                "tokens": [1, 2],
            },
            {"id": 1, "seek": 0, "start": 1.5, "end": 3.25, "text": " --> 東京 ", "tokens": [3]},
            {"id": 2, "seek": 0, "start": 3.25, "end": 3.25, "text": "", "tokens": []},
            {
                "id": 3,
                "seek": 0,
                "start": 3725.0004,
                "end": 3727.9996,
                "text": " done",
                "tokens": [4],
            },
        ],
    }


def _write(tmp_path, writer_factory, fmt, result, options=None):
    out = tmp_path / writer_factory.__module__.split(".")[0] / fmt
    out.mkdir(parents=True, exist_ok=True)
    writer_factory(fmt, str(out))(result, "/some/where/audio.file.wav", options)
    return (out / f"audio.file.{fmt}").read_bytes()


def test_format_timestamp():
    assert format_timestamp(0) == "00:00.000"
    assert format_timestamp(61.2345) == "01:01.234"  # round half to even on the milliseconds
    assert format_timestamp(3599.9996) == "01:00:00.000"
    assert format_timestamp(3725.5, always_include_hours=True, decimal_marker=",") == "01:02:05,500"
    assert format_timestamp(1.5, always_include_hours=True) == "00:00:01.500"
    with pytest.raises(ValueError):
        format_timestamp(-0.5)


def _srt_cues(path) -> list[tuple[str, str, str]]:
    import srt

    cues = list(srt.parse(path.read_text(encoding="utf-8")))
    assert [c.index for c in cues] == list(range(1, len(cues) + 1))
    as_text = srt.timedelta_to_srt_timestamp
    return [(as_text(c.start), as_text(c.end), c.content) for c in cues]


def _vtt_cues(path) -> list[tuple[str, str, str]]:
    import webvtt

    assert path.read_text(encoding="utf-8").startswith("WEBVTT\n\n")
    return [(c.start, c.end, c.text) for c in webvtt.read(str(path)).captions]


@requires_reference
@requires_shared_audio
@pytest.mark.parametrize(
    ("fmt", "read_cues", "decimal_marker"),
    [
        pytest.param("srt", _srt_cues, ",", marks=requires("srt"), id="srt"),
        pytest.param("vtt", _vtt_cues, ".", marks=requires("webvtt"), id="vtt"),
    ],
)
def test_subtitles_parse_with_segment_cues(tmp_path, results, fmt, read_cues, decimal_marker):
    """One cue a segment, with its text and times (hours included, as the parsers give them)."""
    result = results["plain"]
    get_writer(fmt, tmp_path)(result, CLIP)
    cues = read_cues(tmp_path / f"libri-1088-134315-0000.{fmt}")
    assert cues == [
        (
            format_timestamp(s["start"], True, decimal_marker),
            format_timestamp(s["end"], True, decimal_marker),
            s["text"].strip(),
        )
        for s in result["segments"]
    ]


@requires_reference
@requires_shared_audio
@requires("srt", "webvtt")
def test_word_level_subtitles_parse(tmp_path, results):
    import srt
    import webvtt

    result = results["words"]
    words = [w for s in result["segments"] for w in s["words"]]

    # line breaking: no line wider than the limit (a single long word aside), at most 2 lines a cue
    text = render(result, "srt", {"max_line_width": 20, "max_line_count": 2})
    cues = list(srt.parse(text))
    assert len(cues) > len(result["segments"])
    for cue in cues:
        lines = cue.content.split("\n")
        assert len(lines) <= 2
        assert all(len(line) <= 20 or " " not in line for line in lines)
    assert (
        " ".join(c.content.replace("\n", " ") for c in cues).split()
        == "".join(w["word"] for w in words).split()
    )
    assert cues[0].start.total_seconds() == pytest.approx(words[0]["start"], abs=5e-4)
    assert cues[-1].end.total_seconds() == pytest.approx(words[-1]["end"], abs=5e-4)
    starts = [c.start for c in cues]
    assert starts == sorted(starts)

    # highlighting: one cue per word, with exactly that word underlined
    get_writer("vtt", tmp_path)(result, CLIP, {"highlight_words": True})
    captions = webvtt.read(str(tmp_path / "libri-1088-134315-0000.vtt")).captions
    underlined = [c for c in captions if "<u>" in c.raw_text]
    assert len(underlined) == len(words)
    for caption, word in zip(underlined, words):
        assert caption.raw_text.count("<u>") == 1
        assert f"<u>{word['word'].strip()}</u>" in caption.raw_text
        assert caption.start == format_timestamp(word["start"], always_include_hours=True)


@requires_reference
@requires_shared_audio
def test_txt_tsv_json_contents(tmp_path, results):
    result = results["words"]
    get_writer("all", tmp_path)(result, shared_clip(CLIP))
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"libri-1088-134315-0000.{ext}" for ext in FORMATS if ext != "all")

    txt = (tmp_path / "libri-1088-134315-0000.txt").read_text(encoding="utf-8")
    assert txt.splitlines() == [s["text"].strip() for s in result["segments"]]

    tsv_text = (tmp_path / "libri-1088-134315-0000.tsv").read_text(encoding="utf-8")
    assert tsv_text.endswith("\n") and not tsv_text.endswith("\n\n")  # each line ends
    tsv = tsv_text.splitlines()
    assert tsv[0] == "start\tend\ttext"
    rows = [line.split("\t") for line in tsv[1:]]
    assert [(int(a), int(b), t) for a, b, t in rows] == [
        (round(1000 * s["start"]), round(1000 * s["end"]), s["text"].strip())
        for s in result["segments"]
    ]

    loaded = json.loads((tmp_path / "libri-1088-134315-0000.json").read_text(encoding="utf-8"))
    assert loaded["text"] == result["text"]
    assert loaded["language"] == "en"
    assert [s["text"] for s in loaded["segments"]] == [s["text"] for s in result["segments"]]
    assert loaded["segments"][0]["words"][0]["word"] == result["segments"][0]["words"][0]["word"]

    for fmt in ("txt", "tsv", "json", "srt", "vtt"):
        assert render(result, fmt) == (tmp_path / f"libri-1088-134315-0000.{fmt}").read_text(
            encoding="utf-8"
        )
    assert render(result, "text") == txt


def test_synthetic_edge_cases(tmp_path):
    result = synthetic_result()
    assert render({"segments": []}, "tsv") == "start\tend\ttext\n"
    assert render(result, "tsv").endswith("\tdone\n")
    assert render(result, "tsv").splitlines()[1:] == [
        "0\t1500\tGrüße à tous",
        "1500\t3250\t--> 東京",
        "3250\t3250\t",
        "3725000\t3728000\tdone",
    ]
    srt_text = render(result, "srt")
    assert "2\n00:00:01,500 --> 00:00:03,250\n-> 東京\n" in srt_text
    assert "4\n01:02:05,000 --> 01:02:08,000\ndone\n" in srt_text
    assert "\n01:02:05.000 --> 01:02:08.000\ndone\n" in render(result, "vtt")
    get_writer("txt", tmp_path)(result, "x.mp3")
    assert (tmp_path / "x.txt").read_bytes() == "Grüße\tà tous\n--> 東京\n\ndone\n".encode()
    with pytest.raises(ValueError, match="unknown output format"):
        render(result, "docx")


def _assert_same_as_openai(tmp_path, result, options):
    import whisper.utils as whisper_utils

    from max_whisper.writers import get_writer as our_get_writer

    for fmt in ("txt", "vtt", "srt", "tsv", "json"):
        theirs = _write(tmp_path, whisper_utils.get_writer, fmt, copy.deepcopy(result), options)
        ours = _write(tmp_path, our_get_writer, fmt, copy.deepcopy(result), options)
        assert ours == theirs, (fmt, options)


@requires_reference
@pytest.mark.skipif(
    sys.getdefaultencoding() != "utf-8", reason="openai-whisper rewrites text off UTF-8"
)
def test_synthetic_same_bytes_as_openai_whisper(tmp_path):
    _assert_same_as_openai(tmp_path, synthetic_result(), None)


@requires_reference
@requires_shared_audio
@pytest.mark.parametrize("kind", ["plain", "words"])
@pytest.mark.parametrize("options", SUBTITLE_OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_same_bytes_as_openai_whisper(tmp_path, results, kind, options):
    # (options are ignored for results without words, on both sides)
    _assert_same_as_openai(tmp_path, results[kind], options)


@requires_reference
@requires_shared_audio
def test_all_writes_every_format_like_openai_whisper(tmp_path, results):
    import whisper.utils as whisper_utils

    options = {"max_line_width": 24, "max_line_count": 2}
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    get_writer("all", tmp_path / "ours")(copy.deepcopy(results["words"]), CLIP, options)
    whisper_utils.get_writer("all", str(tmp_path / "theirs"))(
        copy.deepcopy(results["words"]), CLIP, options
    )
    ours = {p.name: p.read_bytes() for p in (tmp_path / "ours").iterdir()}
    theirs = {p.name: p.read_bytes() for p in (tmp_path / "theirs").iterdir()}
    assert len(ours) == 5 and ours == theirs
