"""LLM_PARAMS parsing (cot_proxy's grammar and typing) and the THINK_* / REASONING_FIELD variables."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from app.config import Config, ConfigError
from app.model_params import ModelParams, ParamsError, parse_llm_params, typed_value

ENV = {"TARGET_BASE_URL": "http://upstream.test/v1"}


def test_cot_proxy_readme_string_unchanged():
    table = parse_llm_params("model=gemma,temperature=0.5,top_k=40;model=llama2,max_tokens=200")
    assert table.names == ["gemma", "llama2"]
    assert table.lookup("gemma").overrides == {"temperature": 0.5, "top_k": 40}
    assert table.lookup("llama2").overrides == {"max_tokens": 200}
    assert table.lookup("other") is None and table.lookup(None) is None


def test_cot_proxy_special_keys():
    raw = (
        " model=Qwen3-32B , upstream_model_name=qwen3:32b,temperature=0.6,top_k=20,"
        "append_to_last_user_message=\\n\\n/no_think,enable_think_tag_filtering=true,"
        "think_tag_start=<thinking>,think_tag_end=</thinking> ;; "
    )
    params = parse_llm_params(raw).lookup("Qwen3-32B")
    assert params == ModelParams(
        name="Qwen3-32B",
        overrides={"temperature": 0.6, "top_k": 20},
        upstream_model="qwen3:32b",
        append_text="\n\n/no_think",
        think_mode="strip",
        think_start="<thinking>",
        think_end="</thinking>",
    )


def test_enable_think_tag_filtering_false_is_keep_and_think_mode_wins():
    assert parse_llm_params("model=a,enable_think_tag_filtering=false").lookup("a").think_mode == "keep"
    both = "model=a,think_mode=separate,enable_think_tag_filtering=true"
    assert parse_llm_params(both).lookup("a").think_mode == "separate"


@pytest.mark.parametrize(
    "key, raw, value",
    [
        ("temperature", "1", 1.0),  # cot_proxy: float(), so 1.0 not 1
        ("temperature", "0.6", 0.6),
        ("top_p", ".9", 0.9),
        ("top_k", "20", 20),
        ("max_tokens", "-1", -1),
        ("seed", "", None),  # cot_proxy: empty is null
        ("top_k", "NULL", None),
        ("stream", "True", True),
        ("echo", "false", False),
        ("mirostat", "1", 1),  # cot_proxy made this bool false; servers want an int
        ("custom", "123.45", 123.45),  # unknown keys are typed by their look (cot_proxy: a string)
        ("custom", "7", 7),
        ("custom", "true", True),
        ("custom", "null", None),
        ("custom", "hello world", "hello world"),
        ("custom", "1e3", 1000.0),
        ("custom", "inf", "inf"),
        ("stop", '["\\n\\n", "User:"]', ["\n\n", "User:"]),
        ("chat_template_kwargs", '{"enable_thinking": false}', {"enable_thinking": False}),
        ("custom", '"42"', "42"),
    ],
)
def test_typed_values(key, raw, value):
    got = typed_value(key, raw)
    assert got == value and type(got) is type(value)


def test_json_values_may_hold_commas_and_semicolons():
    raw = 'model=a,stop=["a,b", "c;d"],logit_bias={"1": -100, "2": 5},x=1;model=b,top_k=3'
    table = parse_llm_params(raw)
    assert table.lookup("a").overrides == {"stop": ["a,b", "c;d"], "logit_bias": {"1": -100, "2": 5}, "x": 1}
    assert table.lookup("b").overrides == {"top_k": 3}


def test_weak_defaults_fallback_and_think_keys():
    table = parse_llm_params(
        "model=*,default.temperature=0.7,think_mode=separate,think_prefilled=true;"
        'model=b,default.stop=["x"],temperature=0.1'
    )
    assert table.names == ["b"]
    fallback = table.lookup("unknown")
    assert fallback.name == "*" and fallback.defaults == {"temperature": 0.7}
    assert fallback.think_mode == "separate" and fallback.think_prefilled is True
    assert table.lookup("unknown", fallback=False) is None
    assert table.lookup("b").defaults == {"stop": ["x"]} and table.lookup("b").overrides == {"temperature": 0.1}
    assert parse_llm_params("model=default,top_k=1").fallback.name == "default"


def test_append_text_escapes_and_real_newlines():
    assert parse_llm_params("model=a,append_to_last_user_message= \\t x\\\\n").lookup("a").append_text == "\t x\\n"
    assert (
        parse_llm_params("model=a,append_to_last_user_message=\n\n/no_think").lookup("a").append_text == "\n\n/no_think"
    ), "a .env loader may already have turned \\n into newlines: they stay"


@pytest.mark.parametrize(
    "raw, message",
    [
        ("temperature=0.5", "group 1 'temperature=0.5': a group must start with model=NAME"),
        ("model=a;model=b,top_k", "group 2 'model=b,top_k': 'top_k' is not key=value"),
        ("model=a,top_k=1.5", "top_k='1.5': not an integer"),
        ("model=a,temperature=warm", "temperature='warm': not a number"),
        ("model=a,stream=yes", "stream='yes': use true or false"),
        ("model=a;model=a", "group 2 'model=a': model 'a' is configured twice"),
        ("model=default;model=*", "model '*' is configured twice"),
        ("model=a,stop=[1,", "stop='[1,': not valid JSON"),
        ("model=a,think_mode=hide", "think_mode='hide': use one of strip, separate, keep"),
        ("model=a,enable_think_tag_filtering=1", "enable_think_tag_filtering='1': use true or false"),
        ("model=a,upstream_model_name=", "upstream_model_name= needs a value"),
        ("model=a,model=b", "use upstream_model_name= for an alias"),
        ("model=a,default.upstream_model_name=x", "only request parameters take a default. prefix"),
        ("model=", "a group must start with model=NAME"),
    ],
)
def test_malformed_groups_are_named(raw, message):
    with pytest.raises(ParamsError) as info:
        parse_llm_params(raw)
    assert message in str(info.value)


def test_config_reads_the_think_variables():
    config = Config.from_env(
        {
            **ENV,
            "THINK_MODE": "Separate",
            "THINK_TAG": "<thinking>",
            "THINK_END_TAG": "</thinking>",
            "REASONING_FIELD": "both",
            "LLM_PARAMS": "model=a,top_k=1",
        }
    )
    assert (config.think_mode, config.think_tag, config.think_end_tag, config.reasoning_field) == (
        "separate",
        "<thinking>",
        "</thinking>",
        "both",
    )
    assert config.llm_params.lookup("a").overrides == {"top_k": 1}
    default = Config.from_env(ENV)
    assert (default.think_mode, default.think_tag, default.think_end_tag, default.reasoning_field) == (
        "strip",
        "<think>",
        "</think>",
        "reasoning_content",
    )
    assert default.llm_params.names == []


@pytest.mark.parametrize(
    "env, message",
    [
        ({"THINK_MODE": "hide"}, "THINK_MODE='hide': use one of strip, separate, keep"),
        ({"REASONING_FIELD": "thoughts"}, "REASONING_FIELD='thoughts'"),
        ({"LLM_PARAMS": "model=a,x"}, "LLM_PARAMS: group 1 'model=a,x': 'x' is not key=value"),
        ({"THINK_TAG": "|", "THINK_END_TAG": "|"}, "THINK_END_TAG='|': must differ from THINK_TAG"),
        ({"LLM_PARAMS": "model=a,think_tag_end=<think>"}, "model=a: think_tag_start and think_tag_end are equal"),
    ],
)
def test_config_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError) as info:
        Config.from_env({**ENV, **env})
    assert message in str(info.value)


def test_model_params_is_standard_library_only():
    """gunicorn.conf.py validates the config in the master, before gevent patches anything."""
    tree = ast.parse(Path(__file__).parents[2].joinpath("app", "model_params.py").read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
