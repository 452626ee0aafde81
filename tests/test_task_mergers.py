"""Mergers over real files: exact merged bytes, appends equal to one merge, exact error
lines, and `out` unchanged with no temporary file left after a failure."""

from __future__ import annotations

import errno
import os
import re
import tarfile
import textwrap
from pathlib import Path

import pytest

from gsup.errors import GsupError
from gsup.tasks.mergers import MergeError, Part, merger_for

CUSTOM_MODULE = textwrap.dedent(
    """
    from pathlib import Path

    def concat(files, out):
        with open(out, "wb") as sink:
            for name in files:
                sink.write(Path(name).name.encode() + b"=" + Path(name).read_bytes())

    def boom(files, out):
        Path(out).write_bytes(b"half written")
        raise ValueError("bad\\nthing")

    def nothing(files, out):
        pass

    def beaten(files, out):  # another writer creates the merged file meanwhile
        Path(out).write_bytes(b"mine")
        (Path(out).parent / "merged.txt").write_bytes(b"theirs")
    """
)


def unit(tmp_path: Path, name: str, **files: bytes) -> Part:
    """A unit's folder under tmp_path/units holding `files` (name=content, in order)."""
    folder = tmp_path / "units" / name
    folder.mkdir(parents=True)
    for file_name, content in files.items():
        (folder / file_name).write_bytes(content)
    return Part(name, tuple(folder / file_name for file_name in files), root=folder)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The merged file's path, alone in its folder so that leftovers show."""
    folder = tmp_path / "merged"
    folder.mkdir()
    return folder / "merged.txt"


def folder_of(out: Path) -> list[str]:
    return sorted(os.listdir(out.parent))


def members(tar: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar) as archive:
        return [(m.name, archive.extractfile(m).read()) for m in archive]


@pytest.fixture
def custom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of a module of custom mergers, importable from sys.path."""
    (tmp_path / "h6_custom_mergers.py").write_text(CUSTOM_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "h6_custom_mergers"


# --- each kind merged in full -------------------------------------------------------------


def test_text_concatenates_and_ends_every_file_with_a_newline(tmp_path, out):
    parts = [
        unit(tmp_path, "u1", a=b"one\ntwo\n", b=b"no newline"),
        unit(tmp_path, "u2", a=b"", b=b"crlf\r\n"),
        unit(tmp_path, "u3", a=b"last"),
    ]
    size = merger_for("text").merge(parts, out)
    assert out.read_bytes() == b"one\ntwo\nno newline\ncrlf\r\nlast\n"
    assert size == len(out.read_bytes())
    assert folder_of(out) == ["merged.txt"]


def test_csv_keeps_the_first_header_and_every_row_byte_exact(tmp_path, out):
    header = b'id,"note\nwith newline"\r\n'
    parts = [
        unit(tmp_path, "u1", a=header + b'1,"two\nlines"\r\n2,plain\r\n'),
        unit(tmp_path, "u2", a=header),  # only a header: adds nothing
        unit(tmp_path, "u3", a=b'id,"note\nwith newline"\n3,"a ""quoted"" word"'),
        unit(tmp_path, "u4", a=header.removesuffix(b"\r\n"), b=header + b"4,x\n"),
    ]
    merger_for("csv").merge(parts, out)
    assert out.read_bytes() == (
        b'id,"note\nwith newline"\r\n1,"two\nlines"\r\n2,plain\r\n3,"a ""quoted"" word"\n4,x\n'
    )


def test_csv_of_header_only_files_is_the_header(tmp_path, out):
    merger_for("csv").merge([unit(tmp_path, "u1", a=b"a,b"), unit(tmp_path, "u2", a=b"a,b\n")], out)
    assert out.read_bytes() == b"a,b\n"


def test_jsonl_checks_lines_drops_blank_ones_and_ends_each_with_a_newline(tmp_path, out):
    parts = [
        unit(tmp_path, "u1", a=b'{"a": 1}\n\n  \t\n[2, 3]\r\n'),
        unit(tmp_path, "u2", a=b"", b=b'"four"'),
    ]
    merger_for("jsonl").merge(parts, out)
    assert out.read_bytes() == b'{"a": 1}\n[2, 3]\n"four"\n'


def test_tar_names_members_by_unit_and_path_in_its_folder(tmp_path, out):
    first = unit(tmp_path, "u1", a=b"alpha")
    (first.root / "sub").mkdir()
    (first.root / "sub" / "deep.txt").write_bytes(b"deep\x00bytes" * 100)
    first = Part("u1", (*first.files, first.root / "sub" / "deep.txt"), root=first.root)
    no_root = Part("u2", unit(tmp_path, "u2", b=b"").files)  # named by file name alone
    merger_for("tar").merge([first, no_root], out)
    assert members(out) == [
        ("u1/a", b"alpha"),
        ("u1/sub/deep.txt", b"deep\x00bytes" * 100),
        ("u2/b", b""),
    ]
    assert out.stat().st_size % 512 == 0 and out.read_bytes().endswith(bytes(1024))


def test_an_empty_merge_is_an_empty_file_or_an_empty_tar(out):
    merger_for("text").merge([], out)
    assert out.read_bytes() == b""
    merger_for("tar", overwrite=True).merge([], out)
    assert members(out) == [] and out.read_bytes() == bytes(1024)


# --- appends equal one merge --------------------------------------------------------------


def parts_of(kind: str, tmp_path: Path) -> list[Part]:
    contents = {
        "text": [b"a\n", b"b", b"", b"c\r\nd\n", b"e"],
        "csv": [b"h,i\n1,2\n", b"h,i\r\n", b'h,i\n3,"x\ny"', b"h,i\n4,5\n", b"h,i\n6,7\n"],
        "jsonl": [b"1\n", b"\n", b'{"b": 2}', b"[3]\r\n\n4\n", b"null"],
        "tar": [b"a", b"", b"c" * 600, b"d\n", b"\x00" * 1024],
    }[kind]
    return [unit(tmp_path, f"u{i}", out=content) for i, content in enumerate(contents)]


@pytest.mark.parametrize("kind", ["text", "csv", "jsonl", "tar"])
def test_appends_in_steps_equal_one_merge(kind, tmp_path, out):
    parts = parts_of(kind, tmp_path)
    merger = merger_for(kind)
    whole = out.with_name("whole")
    merger.merge(parts, whole)
    steps = [[], parts[:1], parts[1:3], [], parts[3:]]  # the first appends to no file
    sizes = [merger.append(step, out) for step in steps]
    assert out.read_bytes() == whole.read_bytes()
    assert sizes[-1] == whole.stat().st_size
    if kind == "tar":
        assert members(out) == [(f"u{i}/out", p.files[0].read_bytes()) for i, p in enumerate(parts)]
    assert folder_of(out) == ["merged.txt", "whole"]


def test_merges_write_a_temporary_file_of_their_own_beside_out(tmp_path, out, monkeypatch):
    renamed = []

    def replace(source, target):
        renamed.append((Path(source), Path(source).read_bytes(), Path(target)))
        os.rename(source, target)

    monkeypatch.setattr(os, "replace", replace)
    merger = merger_for("text", overwrite=True)
    merger.merge([unit(tmp_path, "u1", a=b"one")], out)
    merger.append([unit(tmp_path, "u2", a=b"two")], out)
    (first, first_bytes, target), (second, second_bytes, _) = renamed
    assert (first_bytes, second_bytes, target) == (b"one\n", b"one\ntwo\n", out)
    for temporary in (first, second):
        assert temporary.parent == out.parent
        assert re.fullmatch(r"\.merged\.txt\.[0-9a-f]{16}\.merging", temporary.name)
    assert first != second
    assert folder_of(out) == ["merged.txt"]


def test_an_append_of_no_files_leaves_out_untouched(tmp_path, out):
    merger = merger_for("csv")
    merger.merge([unit(tmp_path, "u1", a=b"a\n1\n")], out)
    inode = out.stat().st_ino
    assert merger.append([Part("u2", ())], out) == len(b"a\n1\n")
    assert out.stat().st_ino == inode


def test_append_replaces_out_instead_of_writing_into_it(tmp_path, out):
    merger = merger_for("text")
    merger.merge([unit(tmp_path, "u1", a=b"one\n")], out)
    old = tmp_path / "old"
    os.link(out, old)  # still the old file's inode after a replacement
    merger.append([unit(tmp_path, "u2", a=b"two\n")], out)
    assert (old.read_bytes(), out.read_bytes()) == (b"one\n", b"one\ntwo\n")


@pytest.mark.parametrize("how", ["missing", "refused"])
def test_append_copies_out_itself_without_copy_file_range(how, tmp_path, out, monkeypatch):
    def refuse(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    if how == "missing":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    else:
        monkeypatch.setattr(os, "copy_file_range", refuse)
    merger = merger_for("csv")
    merger.merge([unit(tmp_path, "u1", a=b"h\n" + b"1\n" * 300_000)], out)
    merger.append([unit(tmp_path, "u2", a=b"h\n2\n")], out)
    assert out.read_bytes() == b"h\n" + b"1\n" * 300_000 + b"2\n"


# --- errors: the exact line, out unchanged, no temporary file ----------------------------


@pytest.mark.parametrize(
    ("kind", "line"),
    [
        ("xml", "unknown merger 'xml': choose text, csv, jsonl, tar or pkg.mod:func"),
        ("h6_no_such_module:f", "merger h6_no_such_module:f: cannot import module"
         " 'h6_no_such_module': No module named 'h6_no_such_module'"),
        ("a-b:f", "merger a-b:f: target 'a-b:f': 'a-b' is not a Python name"),
        ("os:sep", "merger os:sep: os:sep is not callable (it is a str)"),
    ],
)  # fmt: skip
def test_a_bad_kind_is_refused(kind, line):
    with pytest.raises(MergeError) as caught:
        merger_for(kind)
    assert str(caught.value) == line
    assert isinstance(caught.value, GsupError)


# kind, units (name, content of its file "a", None for no file), the line; {u} is the
# folder of the units' folders
FAILURES = {
    "missing file": ("text", [("ok", b"fine\n"), ("u1", None)],
                     "unit u1, {u}/u1/a: cannot read: No such file or directory"),
    "csv header differs": ("csv", [("ok", b"a,b\n1,2\n"), ("u1", b"a,c\n3,4\n")],
                           "unit u1, {u}/u1/a: header 'a,c' differs from the first file's 'a,b'"),
    "csv headers shortened": ("csv", [("ok", b"a,b\n"), ("u1", b"c" * 70 + b"\n")],
                              "unit u1, {u}/u1/a: header '" + "c" * 58 + "… differs from the"
                              " first file's 'a,b'"),
    "csv empty": ("csv", [("ok", b"a,b\n"), ("u1", b"")], "unit u1, {u}/u1/a: empty: no header"),
    "csv blank first line": ("csv", [("u1", b"\na,b\n")],
                             "unit u1, {u}/u1/a: no header (the first line is blank)"),
    "jsonl bad line": ("jsonl", [("ok", b"[]"), ("u1", b'1\n\n{"a": }\n')],
                       "unit u1, {u}/u1/a: line 3 is not JSON: Expecting value at column 7"),
    "jsonl bad bytes": ("jsonl", [("u1", b'"\xff"\n')],
                        "unit u1, {u}/u1/a: line 1 is not JSON: 'utf-8' codec can't decode byte"
                        " 0xff in position 1: invalid start byte"),
    "unit name with a newline": ("csv", [("two\nlines", b"")],
                                 "unit two\\nlines, {u}/two\\nlines/a: empty: no header"),
}  # fmt: skip


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("call", ["merge", "append"])
def test_a_failed_merge_says_why_and_leaves_out_as_it_was(failure, call, tmp_path, out):
    kind, units, line = FAILURES[failure]
    parts = [
        unit(tmp_path, name, a=content)
        if content is not None
        else Part(name, (tmp_path / "units" / name / "a",))
        for name, content in units
    ]
    before = b"0\n" if kind == "jsonl" else b"a,b\n0,0\n"  # valid for append to extend
    out.write_bytes(before)
    with pytest.raises(MergeError) as caught:
        getattr(merger_for(kind, overwrite=True), call)(parts, out)
    assert str(caught.value) == line.format(u=tmp_path / "units")
    assert out.read_bytes() == before
    assert folder_of(out) == ["merged.txt"]


def test_a_csv_append_checks_headers_against_out(tmp_path, out):
    merger = merger_for("csv")
    merger.merge([unit(tmp_path, "u1", a=b"a,b\n1,2\n")], out)
    with pytest.raises(MergeError) as caught:
        merger.append([unit(tmp_path, "u2", a=b"a,b\n3,4\n"), unit(tmp_path, "u3", a=b"x\n")], out)
    assert str(caught.value) == (
        f"unit u3, {tmp_path}/units/u3/a: header 'x' differs from the first file's 'a,b'"
    )
    assert out.read_bytes() == b"a,b\n1,2\n"
    assert folder_of(out) == ["merged.txt"]


def test_merge_refuses_an_existing_out_unless_overwrite(tmp_path, out):
    out.write_bytes(b"before")
    parts = [unit(tmp_path, "u1", a=b"new\n")]
    with pytest.raises(MergeError) as caught:
        merger_for("text").merge(parts, out)
    assert str(caught.value) == f"{out} exists; set overwrite"
    assert out.read_bytes() == b"before"
    merger_for("text", overwrite=True).merge(parts, out)
    assert out.read_bytes() == b"new\n"
    assert folder_of(out) == ["merged.txt"]


def test_tar_append_refuses_an_out_that_does_not_end_as_its_tars_do(tmp_path, out):
    out.write_bytes(b"not a tar")
    with pytest.raises(MergeError) as caught:
        merger_for("tar").append([unit(tmp_path, "u1", a=b"x")], out)
    assert str(caught.value) == f"{out} does not end as a tar made by this merger (two zero blocks)"
    assert out.read_bytes() == b"not a tar"
    assert folder_of(out) == ["merged.txt"]


@pytest.mark.parametrize(
    ("unit_name", "relative", "with_root", "member"),
    [
        ("..", "a", True, "../a"),
        ("x/../..", "a", True, "x/../../a"),
        ("/etc", "a", True, "/etc/a"),
        ("", "a", True, "/a"),
        ("u1", "../u1/a", True, "u1/../u1/a"),
        ("u1", "..", False, "u1/.."),  # without a root, the file's name
        ("u1", ".", True, "u1/."),
    ],
)
def test_tar_refuses_unsafe_member_names(unit_name, relative, with_root, member, tmp_path, out):
    root = unit(tmp_path, "u1", a=b"a").root
    file = root / relative
    with pytest.raises(MergeError) as caught:
        merger_for("tar").merge([Part(unit_name, (file,), root if with_root else None)], out)
    assert str(caught.value) == f"unit {unit_name}, {file}: unsafe tar member name {member!r}"
    assert folder_of(out) == []


def test_tar_refuses_a_file_outside_the_units_folder(tmp_path, out):
    root, elsewhere = unit(tmp_path, "u1").root, tmp_path / "elsewhere"
    with pytest.raises(MergeError) as caught:
        merger_for("tar").merge([Part("u1", (elsewhere,), root)], out)
    assert str(caught.value) == f"unit u1, {elsewhere}: not in the unit's folder {root}"
    assert folder_of(out) == []


# --- custom mergers -----------------------------------------------------------------------


def test_a_custom_merger_gets_every_file_in_order(custom, tmp_path, out):
    merger = merger_for(f"{custom}:concat")
    assert not merger.incremental
    parts = [unit(tmp_path, "u1", a=b"1;", b=b"2;"), unit(tmp_path, "u2", c=b"3;")]
    assert merger.merge(parts, out) == len(b"a=1;b=2;c=3;")
    assert out.read_bytes() == b"a=1;b=2;c=3;"
    assert folder_of(out) == ["merged.txt"]
    with pytest.raises(NotImplementedError):
        merger.append(parts, out)


def test_a_custom_merger_that_raises_keeps_its_traceback(custom, tmp_path, out):
    out.write_bytes(b"before")
    with pytest.raises(MergeError) as caught:
        merger_for(f"{custom}:boom", overwrite=True).merge([unit(tmp_path, "u1", a=b"")], out)
    assert str(caught.value) == f"merger {custom}:boom raised ValueError: bad\\nthing"
    assert caught.value.traceback.startswith("Traceback (most recent call last):\n")
    assert 'raise ValueError("bad\\nthing")' in caught.value.traceback
    assert caught.value.traceback.endswith("ValueError: bad\nthing\n")
    assert out.read_bytes() == b"before"
    assert folder_of(out) == ["merged.txt"]  # its half-written file is gone


def test_a_custom_merger_that_writes_nothing_is_an_error(custom, tmp_path, out):
    with pytest.raises(MergeError) as caught:
        merger_for(f"{custom}:nothing").merge([unit(tmp_path, "u1", a=b"")], out)
    assert str(caught.value) == f"merger {custom}:nothing did not write its output file"
    assert caught.value.traceback is None
    assert folder_of(out) == []


def refuse_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(source, target):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)


def test_without_hard_links_merge_makes_out_by_renaming(tmp_path, out, monkeypatch):
    refuse_hard_links(monkeypatch)
    merger_for("text").merge([unit(tmp_path, "u1", a=b"one\n")], out)
    assert out.read_bytes() == b"one\n"
    assert folder_of(out) == ["merged.txt"]


@pytest.mark.parametrize("hard_links", [True, False])
def test_without_overwrite_an_out_made_during_the_merge_is_kept(
    hard_links, custom, tmp_path, out, monkeypatch
):
    if not hard_links:
        refuse_hard_links(monkeypatch)
    with pytest.raises(MergeError) as caught:
        merger_for(f"{custom}:beaten").merge([unit(tmp_path, "u1", a=b"")], out)
    assert str(caught.value) == f"{out} exists; set overwrite"
    assert out.read_bytes() == b"theirs"
    assert folder_of(out) == ["merged.txt"]


def test_which_mergers_are_incremental():
    assert [merger_for(kind).incremental for kind in ("text", "csv", "jsonl", "tar")] == [True] * 4


def test_a_merge_run_again_after_its_append_landed_writes_nothing_and_says_so(tmp_path):
    """A merge job requeued after a crash that came after its append: the file is not the
    size the journal knows, so it is left as it is, for the engine to write anew."""
    from gsup.tasks.merge_job import merge

    for n in (0, 1):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "out.csv").write_text(f"n\n{n}\n")
    out = str(tmp_path / "merged.csv")
    common = {"out": out, "kind": "csv", "root": str(tmp_path), "outputs": ["out.csv"]}
    first = merge(units=[0], base=None, overwrite=False, **common)
    assert first == {"size": len("n\n0\n")}
    second = merge(units=[1], base=first["size"], overwrite=True, **common)
    assert second == {"size": len("n\n0\n1\n")}
    assert merge(units=[1], base=first["size"], overwrite=True, **common) == {
        "stale": second["size"]
    }
    assert Path(out).read_text() == "n\n0\n1\n"
