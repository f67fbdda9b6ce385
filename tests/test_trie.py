import pytest

from duckllm.errors import ArgumentError
from duckllm.runtime.llama import _trie

END = 0


def test_decoding_stops_choosing_where_one_option_is_left():
    # 'card_lost' and 'card_arrival' share their first token; 'refund' is alone from the start
    paths = [[5, 6, END], [5, 7, 8, END], [9, END]]
    trie = _trie(paths)
    assert set(trie["children"]) == {5, 9}
    assert trie["children"][9]["index"] == 2 and trie["children"][9]["path"] == paths[2]
    shared = trie["children"][5]
    assert "index" not in shared           # still two options below: must choose at the next token
    assert shared["children"][7]["index"] == 1


def test_an_option_that_prefixes_another_is_told_apart_by_the_end_token():
    trie = _trie([[5, END], [5, 6, END]])
    assert set(trie["children"][5]["children"]) == {END, 6}


def test_options_that_tokenize_alike_are_refused():
    with pytest.raises(ArgumentError, match="tokenize identically"):
        _trie([[5, END], [5, END]])
