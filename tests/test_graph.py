import pytest

from nbconductor._errors import CycleError, OptionError, TemplateError, UnknownNameError
from nbconductor._graph import Graph, free_names
from nbconductor._types import Step


def graph(**bodies):
    return Graph({name: Step(name, body) for name, body in bodies.items()})


def test_dependencies_are_inferred_from_references():
    g = graph(
        research="About {{ topic }}", draft="{{ topic }} {{ research }}", stats="{{ draft|length }}"
    )
    assert g.deps == {"research": set(), "draft": {"research"}, "stats": {"draft"}}
    assert g.external_names("draft") == {"topic"}
    assert g.order() == ["research", "draft", "stats"]


def test_loop_variables_and_globals_are_not_dependencies():
    names = free_names(Step("s", "{% for x in items %}{{ x }}{% endfor %} {{ history('draft') }}"))
    assert names == {"items"}


def test_python_step_names_exclude_locals_imports_and_builtins():
    step = Step(
        "s",
        "import math\ny = len(draft)\ndef f(a):\n    return a\nf(y) + math.pi + other",
        kind="python",
    )
    assert free_names(step) == {"draft", "other"}


def test_map_when_and_after_edges():
    steps = {
        "a": Step("a", "x"),
        "b": Step("b", "y", after=["a"]),
        "c": Step("c", "{{ lang }} {{ a }}", map="lang in b"),
        "d": Step("d", "z", when="c is not None"),
    }
    g = Graph(steps)
    assert g.deps["b"] == {"a"} and g.deps["c"] == {"a", "b"} and g.deps["d"] == {"c"}
    assert "lang" not in g.external_names("c")


def test_generations_group_independent_steps():
    g = graph(a="1", b="2", c="{{ a }}{{ b }}", d="{{ a }}", e="{{ c }}{{ d }}")
    assert g.generations() == [["a", "b"], ["c", "d"], ["e"]]
    assert g.upstream(["d"]) == {"a", "d"}
    assert g.downstream(["a"]) == {"c", "d", "e"}


def test_cycle_names_its_steps():
    g = graph(a="{{ c }}", b="{{ a }}", c="{{ b }}", ok="fine")
    with pytest.raises(CycleError) as err:
        g.check()
    assert set(err.value.cycle) == {"a", "b", "c"}
    assert "cycle" in str(err.value) and "→" in str(err.value)


def test_unknown_after_suggests_a_name():
    with pytest.raises(UnknownNameError, match="did you mean `draft`"):
        Graph({"draft": Step("draft", "x"), "b": Step("b", "y", after=["draf"])})


def test_template_syntax_error_names_step_and_line():
    with pytest.raises(TemplateError, match=r"step `s`: template syntax error on line 2"):
        free_names(Step("s", "ok\n{{ broken "))


def test_malformed_map():
    with pytest.raises(OptionError, match="VAR in EXPR"):
        free_names(Step("s", "x", map="langs"))
