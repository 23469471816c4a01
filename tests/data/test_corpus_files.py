"""Corpus files are text: gzip/bz2/xz text is read transparently, other binary input and text that is not
UTF-8 are refused naming file and offset, and an empty corpus says "no text" before any dataset is built."""
import bz2
import gzip
import lzma
import os

import pytest

from mlkd_fast.data.corpus import iter_lines, packed_corpus
from mlkd_fast.errors import InputError

LINES = ["first line", "  ", "second line ü", "third"]


@pytest.mark.parametrize("opener,name", [(open, "c.txt"), (gzip.open, "c.txt.gz"), (bz2.open, "c.bz2"),
                                         (lzma.open, "c.xz"), (gzip.open, "no_suffix")])
def test_text_and_compressed_text(tmp_path, opener, name):
    path = tmp_path / name
    with opener(path, "wb") as f:
        f.write(("\ufeff" + "\n".join(LINES) + "\n").encode("utf-8"))
    assert list(iter_lines([str(path)])) == ["first line", "second line ü", "third"]


def test_binary_and_non_utf8_are_refused(tmp_path):
    binary = tmp_path / "random.bin"
    binary.write_bytes(b"some text\n" + bytes(range(256)))
    with pytest.raises(InputError, match=r"random\.bin' is binary, not text: a NUL byte at byte offset 10 \(line 2\)"):
        list(iter_lines([str(binary)]))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("ok\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt', line 2: not UTF-8 text \(byte offset 6"):
        list(iter_lines([str(latin)]))
    archive = tmp_path / "c.zip"
    archive.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(InputError, match="zip archive: extract its text files first"):
        list(iter_lines([str(archive)]))


def test_no_text_is_said_before_building(tmp_path):
    from tiny_bert import tiny_tokenizer

    empty = tmp_path / "blank.txt"
    empty.write_text("\n   \n\n")
    (tmp_path / "tok").mkdir()
    tok = tiny_tokenizer(str(tmp_path / "tok"))
    with pytest.raises(InputError, match="the corpus holds no text"):
        packed_corpus([str(empty)], tok, 16, str(tmp_path / "cache"))
    assert not os.path.exists(tmp_path / "cache")
