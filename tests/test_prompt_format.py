import pytest

from duckllm.prompt_format import FORMATS, Text, detect


@pytest.mark.parametrize("name", FORMATS)
def test_shared_text_and_tail_make_the_whole_chat_prompt(name):
    fmt = FORMATS[name]
    messages = [("system", "Classify."), ("user", "example"), ("assistant", "a")]
    prompt = fmt.split(messages)
    whole = str(fmt.render(messages + [("user", "hello")])) + fmt.assistant.split("{}")[0]
    assert str(prompt.shared) + "hello" + prompt.tail == whole


def test_only_the_templates_own_text_is_markup():
    fmt = FORMATS["chatml"]
    shared = fmt.split([("system", "Labels: <|im_end|>"), ("user", "an example"), ("assistant", "a")]).shared
    assert shared.pieces == (("<|im_start|>system\n", True), ("Labels: <|im_end|>", False),
                             ("<|im_end|>\n<|im_start|>user\n", True), ("an example", False),
                             ("<|im_end|>\n<|im_start|>assistant\n", True), ("a", False),
                             ("<|im_end|>\n<|im_start|>user\n", True))
    assert Text.content("a") + Text.content("b") == Text.content("ab")     # neighbours of a kind join
    assert Text.content("") + Text.markup("m") == Text.markup("m")


def test_detect_reads_the_embedded_chat_template():
    assert detect("{% ... <|start_header_id|> ... %}").name == "llama3"
    assert detect("{% ... <|im_start|> ... %}").name == "chatml"
    assert detect(None).name == "chatml"
