import pytest

from nbconductor._config import Config, ModelRef, load_config, resolve_model
from nbconductor._errors import ConfigError, OptionError


def test_nbconductor_toml_aliases_and_limits(tmp_path):
    (tmp_path / "nbconductor.toml").write_text(
        'default_model = "offline:house"\n'
        '[aliases]\nfast = "offline:quick"\nlocal = { model = "openai-compatible:llama3.1", base_url = "http://localhost:11434/v1" }\n'
        "[concurrency]\nanthropic = 3\n"
    )
    sub = tmp_path / "notebooks"
    sub.mkdir()
    config = load_config(start=sub)
    assert config.limit("anthropic") == 3 and config.limit("openai") == 8
    assert resolve_model("fast", config) == ModelRef("offline", "quick", alias="fast")
    assert resolve_model(None, config).spec == "offline:house"
    local = resolve_model("local", config)
    assert local.provider == "openai-compatible" and local.base_url == "http://localhost:11434/v1"


def test_pyproject_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname="x"\n[tool.nbconductor.aliases]\nwriter = "offline:w"\n'
    )
    assert load_config(start=tmp_path).aliases == {"writer": "offline:w"}


def test_bad_config_names_the_key(tmp_path):
    (tmp_path / "nbconductor.toml").write_text("[concurrency]\nanthropic = 'lots'\n")
    with pytest.raises(ConfigError, match="concurrency.anthropic"):
        load_config(start=tmp_path)


def test_default_aliases_follow_available_keys(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert resolve_model("fast", Config()).spec == "offline:fast"
    assert resolve_model(None, Config()).spec == "offline:default"
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    assert resolve_model("writer", Config()).provider == "openai"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "x")
    assert resolve_model("writer", Config()).provider == "anthropic"


def test_unknown_alias_and_alias_loop():
    with pytest.raises(OptionError, match="unknown model `nope`"):
        resolve_model("nope", Config())
    with pytest.raises(OptionError, match="refers to itself"):
        resolve_model("a", Config(aliases={"a": "b", "b": "a"}))


def test_image_alias_needs_an_images_provider(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "x")
    with pytest.raises(OptionError, match="image steps need OPENAI_API_KEY"):
        resolve_model("image", Config())
    monkeypatch.setenv("OPENAI_API_KEY", "y")
    assert resolve_model("image", Config()).spec == "openai:gpt-image-1"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert resolve_model("image", Config()).spec == "offline:image"


def test_offline_can_be_forced_even_with_keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "x")
    monkeypatch.setenv("NBCONDUCTOR_OFFLINE", "1")
    assert resolve_model("writer", Config()).spec == "offline:writer"
    assert resolve_model("openai:gpt-4.1", Config()).spec == "offline:gpt-4.1"
    monkeypatch.delenv("NBCONDUCTOR_OFFLINE")
    assert resolve_model("writer", Config()).provider == "anthropic"


def test_config_errors_name_the_file_the_key_and_the_fix(tmp_path):
    toml = tmp_path / "nbconductor.toml"
    cases = {
        '[aliases]\nfast = { model = "offline:f", base_ur = "http://x" }\n': "`aliases.fast.base_ur` is not a setting: did you mean `base_url`? (known here: model, base_url, api_key_env, structured, concurrency, api)",
        'defualt_model = "offline:x"\n': "`defualt_model` is not a setting: did you mean `default_model`?",
        "[retry]\nbase_dely = 1\n": "`retry.base_dely` is not a setting: did you mean `base_delay`?",
        '[aliases]\nfast = { base_url = "http://x" }\n': "`aliases.fast.model` is required: add `model = …` there",
        "[aliases]\nfast = 3\n": '`aliases.fast` = 3: an alias is "provider:model" or a table',
        "[concurrency]\nanthropic = 'lots'\n": "`concurrency.anthropic` = 'lots': Input should be a valid integer",
        "[aliases\nfast = 1\n": "is not valid TOML:",
    }
    for text, expected in cases.items():
        toml.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(start=tmp_path)
        message = str(info.value)
        assert message.startswith(str(toml)) and expected in message and "\n" not in message, (
            message
        )


def test_unknown_alias_suggests_the_closest(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(OptionError, match="unknown model `wrtier`: did you mean `writer`?"):
        resolve_model("wrtier", Config(aliases={"house": "offline:h"}))
    with pytest.raises(OptionError, match="unknown model `hosue`: did you mean `house`?"):
        resolve_model("hosue", Config(aliases={"house": "offline:h"}))


def test_run_with_a_bad_config_exits_2_before_running(tmp_path, monkeypatch, capsys):
    from nbconductor import Pipeline
    from nbconductor.cli import main
    from nbconductor.handoff._export import export_pipeline

    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "store.sqlite"))
    p = Pipeline(store=":memory:", namespace={"topic": "t"})
    p.step("draft", "Write about {{ topic }}", model="fast")
    job = export_pipeline(p, tmp_path / "job.ipynb")
    (tmp_path / "nbconductor.toml").write_text(
        '[aliases]\nfast = { model = "offline:f", base_ur = "x" }\n'
    )
    capsys.readouterr()
    assert main(["run", str(job), "-o", str(tmp_path / "out.ipynb")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"nbconductor: {tmp_path / 'nbconductor.toml'}: `aliases.fast.base_ur`")
        and "\n" not in err
    )
    assert not (tmp_path / "out.ipynb").exists()
