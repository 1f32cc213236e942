"""Frame specs: parsing, errors a user sees, chunking and the compact inverse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildcat.errors import FarmError, FrameSpecError
from buildcat.frames import MAX_FRAMES, chunk_frames, format_frames, frame_ranges, parse_frames


@pytest.mark.parametrize(
    ("spec", "frames"),
    [
        ("7", [7]),
        ("0", [0]),
        ("1-5", [1, 2, 3, 4, 5]),
        ("3-3", [3]),
        ("1-10:3", [1, 4, 7, 10]),
        ("1-10:20", [1]),
        ("10-25:5", [10, 15, 20, 25]),
        ("1,7,10-12,75-81:2", [1, 7, 10, 11, 12, 75, 77, 79, 81]),
        (" 1 , 3-4 ,\t9 ", [1, 3, 4, 9]),
        ("1 - 3 : 2", [1, 3]),
        ("5,1-3,2,5", [1, 2, 3, 5]),
        ("007", [7]),
        # Blender's own ranges (``-f 2,4..6``), spaces anywhere between the parts
        ("2,4..6", [2, 4, 5, 6]),
        ("1, 3 - 5", [1, 3, 4, 5]),
        (" 1 .. 7 : 3 ", [1, 4, 7]),
        # frames at and below 0, where a scene's range is
        ("-5..-1", [-5, -4, -3, -2, -1]),
        ("-5..5:5", [-5, 0, 5]),
        ("-3-2", [-3, -2, -1, 0, 1, 2]),
        ("-5--3", [-5, -4, -3]),
        ("-2, 0", [-2, 0]),
        ("-007", [-7]),
    ],
)
def test_parse_frames(spec: str, frames: list[int]) -> None:
    assert parse_frames(spec) == frames


def test_parse_frames_full_range() -> None:
    assert parse_frames("1-240") == list(range(1, 241))


def test_parse_frames_at_the_limit() -> None:
    assert len(parse_frames(f"0-{MAX_FRAMES - 1}")) == MAX_FRAMES


@pytest.mark.parametrize(
    ("spec", "part", "reason"),
    [
        ("10-", "10-", "expected N, A-B or A-B:STEP"),
        ("1,10-,20", "10-", "expected N, A-B or A-B:STEP"),
        ("1..", "1..", "expected N, A-B or A-B:STEP"),
        ("1...3", "1...3", "expected N, A-B or A-B:STEP"),
        ("- 5", "- 5", "expected N, A-B or A-B:STEP"),
        ("1-+2", "1-+2", "expected N, A-B or A-B:STEP"),
        ("7:2", "7:2", "expected N, A-B or A-B:STEP"),
        ("1-2-3", "1-2-3", "expected N, A-B or A-B:STEP"),
        ("a", "a", "expected N, A-B or A-B:STEP"),
        ("1-10:", "1-10:", "expected N, A-B or A-B:STEP"),
        ("1.5", "1.5", "expected N, A-B or A-B:STEP"),
        ("1 2", "1 2", "expected N, A-B or A-B:STEP"),
        ("1-10:-2", "1-10:-2", "expected N, A-B or A-B:STEP"),
        ("\u0663", "\u0663", "expected N, A-B or A-B:STEP"),
        ("1\n2", "1\\n2", "expected N, A-B or A-B:STEP"),
        ("25-10", "25-10", "range start is after its end"),
        ("1,25-10:2", "25-10:2", "range start is after its end"),
        ("1-10:0", "1-10:0", "step must be at least 1"),
        ("9" * 40, "9" * 40, "at most 18 digits"),
        ("0-999999999", "0-999999999", "limit is 1,000,000"),
        ("0-600000,0-600000", "0-600000", "limit is 1,000,000"),
    ],
)
def test_parse_frames_names_the_bad_part(spec: str, part: str, reason: str) -> None:
    with pytest.raises(FrameSpecError) as caught:
        parse_frames(spec)
    message = str(caught.value)
    assert f"'{part}'" in message
    assert reason in message
    assert "\n" not in message


def test_bad_part_message_is_exact() -> None:
    with pytest.raises(FrameSpecError, match=r"^bad frame spec part '10-': expected N, A-B or"):
        parse_frames("10-")


@pytest.mark.parametrize("spec", ["", "   ", "\t\n"])
def test_empty_spec(spec: str) -> None:
    with pytest.raises(FrameSpecError, match=r"^empty frame spec$"):
        parse_frames(spec)


@pytest.mark.parametrize("spec", ["1,,2", "1,", ",1", " , "])
def test_empty_part_names_the_spec(spec: str) -> None:
    with pytest.raises(FrameSpecError) as caught:
        parse_frames(spec)
    message = str(caught.value)
    assert message.startswith("empty part in frame spec")
    assert repr(spec.strip()) in message
    assert "\n" not in message


def test_frame_spec_error_is_a_farm_error_and_value_error() -> None:
    with pytest.raises(FarmError):
        parse_frames("x")
    with pytest.raises(ValueError):
        parse_frames("x")


@given(
    st.lists(
        st.tuples(
            st.integers(0, 500), st.integers(0, 60), st.integers(1, 12), st.sampled_from("NRS")
        ),
        min_size=1,
        max_size=8,
    )
)
def test_parse_frames_matches_a_model(parts: list[tuple[int, int, int, str]]) -> None:
    texts: list[str] = []
    expected: set[int] = set()
    for start, length, step, shape in parts:
        if shape == "N":
            texts.append(str(start))
            expected.add(start)
        elif shape == "R":
            texts.append(f"{start}-{start + length}")
            expected.update(range(start, start + length + 1))
        else:
            texts.append(f"{start}-{start + length}:{step}")
            expected.update(range(start, start + length + 1, step))
    assert parse_frames(" , ".join(texts)) == sorted(expected)


@given(st.text(max_size=30))
def test_parse_frames_only_raises_frame_spec_error(spec: str) -> None:
    try:
        frames = parse_frames(spec)
    except FrameSpecError as error:
        assert "\n" not in str(error)
    else:
        assert frames == sorted(set(frames))


@pytest.mark.parametrize(
    ("frames", "spec"),
    [
        ([1, 2, 3, 5, 7, 9], "1-3,5-9:2"),
        ([7], "7"),
        ([3, 1, 2, 2], "1-3"),
        ([1, 10], "1,10"),
        ([4, 5], "4-5"),
        ([1, 3, 4, 5], "1,3-5"),
        ([0, 10, 20, 30, 31], "0-30:10,31"),
        ([], ""),
    ],
)
def test_format_frames(frames: list[int], spec: str) -> None:
    assert format_frames(frames) == spec


def test_frame_ranges() -> None:
    assert frame_ranges([1, 2, 3, 5, 7, 9, 20]) == [(1, 3, 1), (5, 9, 2), (20, 20, 1)]
    assert frame_ranges(range(0, 100, 4)) == [(0, 96, 4)]
    assert frame_ranges([]) == []


@pytest.mark.parametrize(
    ("frames", "spec"),
    [
        ([-5, -4, -3], "-5..-3"),
        ([-2, -1, 0, 1], "-2..1"),
        ([-6, -4, -2, 0], "-6..0:2"),
        ([-2, 0], "-2,0"),
        ([3, -5], "-5,3"),
    ],
)
def test_format_frames_writes_negative_ranges_with_two_dots(frames: list[int], spec: str) -> None:
    assert format_frames(frames) == spec
    assert parse_frames(spec) == sorted(frames)


@given(st.lists(st.integers(-10_000, 10_000), min_size=1, max_size=200))
def test_format_then_parse_round_trips(frames: list[int]) -> None:
    spec = format_frames(frames)
    assert parse_frames(spec) == sorted(set(frames))


@given(st.lists(st.integers(0, 300), max_size=200))
def test_frame_ranges_cover_exactly_the_frames(frames: list[int]) -> None:
    covered: list[int] = []
    for start, end, step in frame_ranges(frames):
        assert start <= end
        assert step >= 1
        assert (end - start) % step == 0
        covered.extend(range(start, end + 1, step))
    assert covered == sorted(set(frames))


@given(st.integers(0, 1000), st.integers(1, 50), st.integers(1, 200))
def test_format_frames_compresses_an_arithmetic_run(start: int, step: int, count: int) -> None:
    frames = list(range(start, start + step * count, step))
    spec = format_frames(frames)
    assert spec.count(",") <= 1
    assert parse_frames(spec) == frames


@given(st.lists(st.integers(0, 10_000), max_size=100), st.integers(1, 30))
def test_chunk_frames_keeps_order_and_coverage(frames: list[int], size: int) -> None:
    chunks = chunk_frames(frames, size)
    assert [frame for chunk in chunks for frame in chunk] == frames
    assert all(len(chunk) == size for chunk in chunks[:-1])
    assert all(1 <= len(chunk) <= size for chunk in chunks)
    assert len(chunks) == -(-len(frames) // size)


def test_chunk_frames() -> None:
    assert chunk_frames([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunk_frames([], 3) == []


@pytest.mark.parametrize("size", [0, -1])
def test_chunk_frames_refuses_a_bad_size(size: int) -> None:
    with pytest.raises(FrameSpecError) as caught:
        chunk_frames([1, 2], size)
    assert str(caught.value) == f"bad chunk size {size}: must be at least 1"
