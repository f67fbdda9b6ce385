import pytest

from duckllm.prompt_format import FORMATS, detect


@pytest.mark.parametrize("name", FORMATS)
def test_shared_text_and_tail_make_the_whole_chat_prompt(name):
    fmt = FORMATS[name]
    messages = [("system", "Classify."), ("user", "example"), ("assistant", "a")]
    prompt = fmt.split(messages)
    whole = fmt.render(messages + [("user", "hello")]) + fmt.assistant.split("{}")[0]
    assert prompt.shared + "hello" + prompt.tail == whole


def test_detect_reads_the_embedded_chat_template():
    assert detect("{% ... <|start_header_id|> ... %}").name == "llama3"
    assert detect("{% ... <|im_start|> ... %}").name == "chatml"
    assert detect(None).name == "chatml"
