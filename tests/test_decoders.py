"""The constrained decoders on synthetic logits and a toy vocabulary: no model file needed."""
import math

import numpy as np
import pytest

from duckllm.errors import ArgumentError
from duckllm.runtime import Pick, Write
from duckllm.runtime.decoders import (
    Constraints,
    Picking,
    TakeBack,
    Writing,
    guesses,
    trie,
)
from duckllm.runtime.logprobs import Normalisers, Output, logsumexp

END = 0
PIECES = ["", "card", "_lost", "_arrival", "refund", "\n", "1", "2", "3", "abc", " ", "5\n",
          "Marie", " Curie", " Paris", ".", " yes", " no", "x\n"] + [f"q{i}" for i in range(70)]   # q: filler
T = {piece: token for token, piece in enumerate(PIECES) if piece}


class ToyVocab:
    """Greedy longest-match tokenization over PIECES; token 0 is the end of the answer."""
    end_tokens = [END]

    def tokenize(self, text: str) -> list[int]:
        tokens = []
        while text:
            piece = max((p for p in T if text.startswith(p)), key=len)
            tokens.append(T[piece])
            text = text[len(piece):]
        return tokens

    def detokenize(self, tokens) -> str:
        return "".join(PIECES[t] for t in tokens)

    def piece_texts(self) -> list[str]:
        return PIECES

    def is_end(self, token: int) -> bool:
        return token in self.end_tokens


def out(**favoured) -> Output:
    """Logits: every token at -5 but the named ones (NAMES), which take the values given."""
    logits = np.full(len(PIECES), -5.0, dtype=np.float32)
    for name, value in favoured.items():
        logits[NAMES[name]] = value
    return Output(logits)


NAMES = {"end": END, "card": T["card"], "lost": T["_lost"], "arrival": T["_arrival"], "refund": T["refund"],
         "nl": T["\n"], "one": T["1"], "two": T["2"], "three": T["3"], "abc": T["abc"], "space": T[" "],
         "five_nl": T["5\n"], "marie": T["Marie"], "curie": T[" Curie"], "paris": T[" Paris"], "dot": T["."],
         "yes": T[" yes"], "no": T[" no"], "x_nl": T["x\n"]}


def log_softmax(o: Output, token: int) -> float:
    x = o.logits.astype(np.float64)
    return float(x[token] - np.log(np.exp(x - x.max()).sum()) - x.max())


@pytest.fixture
def constraints():
    return Constraints(ToyVocab())


# ---- the options' trie ----------------------------------------------------------------------

def test_decoding_stops_choosing_where_one_option_is_left():
    # 'card_lost' and 'card_arrival' share their first token; 'refund' is alone from the start
    paths = [[5, 6, END], [5, 7, 8, END], [9, END]]
    root = trie(paths)
    assert set(root.children) == {5, 9} and list(root.tokens) == [5, 9]
    assert root.children[9].index == 2 and root.children[9].path == paths[2]
    shared = root.children[5]
    assert shared.index is None           # still two options below: must choose at the next token
    assert shared.children[7].index == 1


def test_an_option_that_prefixes_another_is_told_apart_by_the_end_token():
    root = trie([[5, END], [5, 6, END]])
    assert set(root.children[5].children) == {END, 6}


def test_options_that_tokenize_alike_are_refused():
    with pytest.raises(ArgumentError, match="tokenize identically"):
        trie([[5, END], [5, END]])


# ---- picking among options ------------------------------------------------------------------

def test_a_pick_decided_at_its_first_token_feeds_and_scores_the_rest(constraints):
    picking = Picking(Pick(("refund", "card_lost", "card_arrival")), constraints)
    first = out(card=3.0, refund=2.0, lost=9.0)        # _lost is likelier but not allowed first
    fed = picking.take(first, lambda o: None)
    assert [t for t, _ in fed] == [T["card"]]          # card_lost and card_arrival still both open
    assert picking.result is None
    assert picking.choice_logprob == pytest.approx(3.0 - math.log(math.exp(3.0) + math.exp(2.0)), abs=1e-6)
    assert picking.logprobs == [pytest.approx(log_softmax(first, T["card"]), abs=1e-5)]

    ended = []
    second = out(arrival=1.0, lost=0.5)
    fed = picking.take(second, lambda o: ended.append(o))
    assert picking.result.index == 2                   # card_arrival
    # the end token that closes the option is never fed: nothing after it is scored
    assert fed == [] and ended == [] and picking.ended
    assert picking.result.token_logprobs == [pytest.approx(log_softmax(first, T["card"]), abs=1e-5),
                                             pytest.approx(log_softmax(second, T["_arrival"]), abs=1e-5)]


def test_the_rest_of_a_long_option_is_fed_in_one_go_and_each_token_scored(constraints):
    picking = Picking(Pick(("card_lost", "refund")), constraints)
    ended = []
    fed = picking.take(out(card=2.0), lambda o: ended.append(o))   # card: only card_lost is left
    assert [t for t, _ in fed] == [T["card"]]          # fed[j] is followed by _lost: score it
    (_, score_and_end), = fed
    after = out(lost=-1.0)
    assert score_and_end(after) is None
    assert ended == [None]                             # the answer ended: the program goes on, logits void
    assert picking.result.token_logprobs[1] == pytest.approx(log_softmax(after, T["_lost"]), abs=1e-5)
    assert len(picking.result.token_logprobs) == 2


def test_without_score_rest_only_the_decoded_tokens_are_scored(constraints):
    picking = Picking(Pick(("card_lost", "refund"), score_rest=False), constraints)
    assert picking.take(out(card=2.0), lambda o: None) == []   # decided: nothing to feed or score
    assert picking.result.index == 0 and len(picking.result.token_logprobs) == 1


def test_tied_options_go_to_the_first_listed(constraints):
    picking = Picking(Pick(("refund", "abc")), constraints)
    picking.take(out(refund=1.0, abc=1.0), lambda o: None)
    assert picking.result.index == 0
    assert math.exp(picking.result.choice_logprob) == pytest.approx(0.5)
    picking = Picking(Pick(("abc", "refund")), constraints)
    picking.take(out(refund=1.0, abc=1.0), lambda o: None)
    assert picking.result.index == 0


def test_a_pick_with_a_stop_feeds_the_stop_and_goes_on(constraints):
    advanced = []
    picking = Picking(Pick((" yes", " no"), stop="\n"), constraints)
    first = out(no=1.0)
    fed = picking.take(first, lambda o: advanced.append(o))
    assert [t for t, _ in fed] == [T[" no"], T["\n"]]    # the stop is fed, not scored
    assert fed[0][1] is None and not picking.ended and picking.result.index == 1
    after_stop = out(yes=1.0)
    fed[1][1](after_stop)
    assert advanced == [after_stop]                   # the program goes on after the stop
    assert picking.result.token_logprobs == [pytest.approx(log_softmax(first, T[" no"]), abs=1e-5)]


def test_an_option_prefixing_another_is_chosen_by_its_stop(constraints):
    picking = Picking(Pick(("card", "card_lost"), stop="\n"), constraints)
    picking.take(out(card=1.0), lambda o: None)
    assert picking.result is None                     # card, then: the stop or _lost
    fed = picking.take(out(nl=2.0, lost=1.0), lambda o: None)
    assert picking.result.index == 0 and [t for t, _ in fed] == [T["\n"]]
    assert len(picking.result.token_logprobs) == 1    # the stop is not part of the option


def test_or_end_lets_the_answer_end_instead(constraints):
    picking = Picking(Pick((" yes", " no"), stop="\n", or_end=True), constraints)
    assert picking.take(out(end=4.0, yes=1.0), lambda o: None) == []
    assert picking.result.index == 2 and picking.ended and picking.result.token_logprobs == []


# ---- writing values -------------------------------------------------------------------------

def test_an_integer_value_takes_only_digits_and_a_token_holding_the_stop_closes_it(constraints):
    writing = Writing(Write(8, kind="integer", stop="\n"), 100, constraints)
    fed = writing.take(out(abc=9.0, one=2.0, two=1.0), lambda o: None)   # letters are likelier but not allowed
    assert [t for t, _ in fed] == [T["1"]]
    fed = writing.take(out(abc=9.0, five_nl=3.0, two=1.0), lambda o: None)
    assert [t for t, _ in fed] == [T["5\n"]]          # closes the value: '5' is kept, the stop is not
    assert writing.result.text == "15" and not writing.result.hit_limit and not writing.ended
    assert len(writing.result.token_logprobs) == 2


def test_a_number_may_take_a_decimal_point_an_integer_may_not(constraints):
    number = Writing(Write(8, kind="number"), 100, constraints)
    integer = Writing(Write(8, kind="integer"), 100, constraints)
    logits = out(dot=5.0, three=1.0)
    assert number.take(logits, lambda o: None)[0][0] == T["."]
    assert integer.take(logits, lambda o: None)[0][0] == T["3"]


def test_a_stop_without_text_before_it_closes_an_empty_value(constraints):
    writing = Writing(Write(8, stop="\n"), 100, constraints)
    fed = writing.take(out(nl=5.0), lambda o: None)
    assert [t for t, _ in fed] == [T["\n"]] and writing.result.text == "" and writing.result.token_logprobs == []


def test_a_value_without_a_stop_ends_with_the_end_token(constraints):
    writing = Writing(Write(8), 100, constraints)
    writing.take(out(abc=2.0), lambda o: None)
    assert writing.take(out(end=3.0), lambda o: None) == []
    assert writing.result.text == "abc" and writing.ended and len(writing.result.token_logprobs) == 1


def test_the_token_limit_ends_a_value_and_writes_its_stop(constraints):
    advanced = []
    writing = Writing(Write(2, stop="x\n"), 100, constraints)
    writing.take(out(one=1.0), lambda o: None)
    fed = writing.take(out(two=1.0), lambda o: advanced.append(o))
    assert writing.result.hit_limit and writing.result.text == "12"
    assert [t for t, _ in fed] == [T["2"], T["x\n"]]    # the last token, then the stop's tokens
    assert fed[0][1] is None and fed[1][1] is not None


def test_the_room_left_bounds_a_value(constraints):
    writing = Writing(Write(50, stop="\n"), 4, constraints)
    assert writing.max_tokens == 2                    # 4 cells - 1 for the stop - 1


def test_a_span_stays_inside_its_source(constraints):
    writing = Writing(Write(8, kind="span", source="Yesterday Marie Curie won."), 100, constraints)
    assert writing.take(out(paris=9.0, marie=3.0), lambda o: None)[0][0] == T["Marie"]
    assert writing.take(out(paris=9.0, curie=3.0, end=1.0), lambda o: None)[0][0] == T[" Curie"]
    assert writing.take(out(paris=9.0, end=2.0), lambda o: None) == []   # ' Paris' is not in the source
    assert writing.result.text == "Marie Curie" and writing.ended


def test_a_span_with_nowhere_left_to_go_writes_its_stop(constraints):
    writing = Writing(Write(8, kind="span", source="abc", stop="\n"), 100, constraints)
    writing.take(out(abc=3.0), lambda o: None)
    # no candidate keeps the value inside the source; the stop is not among the likeliest 64
    fed = writing.take(out(abc=3.0, nl=-50.0, x_nl=-50.0, five_nl=-50.0, end=-50.0), lambda o: None)
    assert writing.result.text == "abc" and [t for t, _ in fed] == [T["\n"]]
    assert len(writing.result.token_logprobs) == 1


# ---- guesses --------------------------------------------------------------------------------

def test_guesses_copy_what_followed_the_last_written_tokens_in_the_prompt():
    prompt = (1, 2, 3, 4, 9, 2, 3, 7, 8)
    assert guesses(prompt, [2, 3], 2) == [7, 8]        # the last place the run is found
    assert guesses(prompt, [5, 4], 3) == [9, 2, 3]     # the longest run found: [4]
    assert guesses(prompt, [6], 3) == [] and guesses(prompt, [2, 3], 0) == []


def test_guesses_that_decoding_picks_are_kept(constraints):
    offered, advanced = [], []
    writing = Writing(Write(8, stop="\n"), 100, constraints,
                      guess=lambda written, limit: offered.append(limit) or [T[" Curie"], T["."]])
    fed = writing.take(out(marie=3.0), lambda o: advanced.append(o))
    assert [t for t, _ in fed] == [T["Marie"], T[" Curie"], T["."]] and offered == [6]   # 8 - 1 written - 1
    assert fed[0][1](out(curie=2.0)) is None          # the guess is what decoding picks: kept
    assert fed[1][1](out(dot=2.0)) is None
    last = out(nl=1.0)
    assert fed[2][1](last) is None and advanced == [last]   # after the last guess, decoding goes on
    assert writing.tokens == [T["Marie"], T[" Curie"], T["."]] and len(writing.logprobs) == 3


def test_a_wrong_guess_is_taken_back_with_those_after_it(constraints):
    writing = Writing(Write(8, stop="\n"), 100, constraints,
                      guess=lambda written, limit: [T[" Curie"], T["."], T["abc"]])
    fed = writing.take(out(marie=3.0), lambda o: None)
    assert fed[0][1](out(curie=2.0)) is None          # ' Curie' kept
    assert fed[1][1](out(paris=2.0)) == TakeBack(2)   # decoding picks ' Paris', not '.': unfeed '.' and 'abc'
    assert fed[2][1](out(abc=2.0)) is None and fed[3][1](out(abc=2.0)) is None   # void after a wrong guess
    assert writing.tokens == [T["Marie"], T[" Curie"]] and writing.result is None


# ---- log-probabilities ----------------------------------------------------------------------

def test_log_probabilities_are_over_the_whole_vocabulary():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(1000) * 4).astype(np.float32)
    o = Output(logits)
    x = logits.astype(np.float64)
    assert logsumexp(logits) == pytest.approx(float(np.log(np.exp(x).sum())), abs=1e-5)
    assert o.logprob(7) == pytest.approx(float(x[7] - np.log(np.exp(x).sum())), abs=1e-5)
    assert o.logprobs(np.array([7, 3])).tolist() == [o.logprob(7), o.logprob(3)]     # to the last bit
    assert Output(logits, normaliser=2.0).logprob(7) == float(logits[7]) - 2.0


def decode_logits(width: int) -> np.ndarray:
    """Rows for several blocks, some past exp's range in float32 (the shifted form's)."""
    rng = np.random.default_rng(width)
    logits = (rng.standard_normal((37, width)) * 6).astype(np.float32)
    logits[3] += 95        # exp overflows
    logits[10] -= 120      # exp underflows
    return logits


@pytest.mark.parametrize("width", [7, 1000, 128_256])     # 128,256: Llama-3's vocabulary
def test_the_normalisers_of_a_decode_computed_together_equal_each_rows_own_to_the_last_bit(width):
    logits = decode_logits(width)
    alone = [Output(row).normaliser for row in logits]
    exact = [float(np.log(np.exp(row.astype(np.float64) - row.max()).sum()) + row.max()) for row in logits]
    assert alone == pytest.approx(exact, abs=1e-5)
    for threads in (1, 3):
        together = Normalisers(threads)
        assert together(logits) == alone
        assert together(logits[1:12]) == alone[1:12]                    # whatever the rows beside it
        together.close()
