"""The step graph: dependencies inferred from references, checks and orderings.

A pure data model: no execution, no I/O. Widgets, the executor and export read it.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterable, Mapping
from functools import cached_property

from ._errors import CycleError, UnknownNameError
from ._template import parse_map, python_names, template_names
from ._types import Step

_PARAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def function_params(fn: Callable) -> tuple[str, ...]:
    """A function step's parameter names (its inputs); cached per function and code object."""
    code = getattr(fn, "__code__", None)
    try:
        hit = _PARAMS.get(fn)
    except TypeError:  # neither hashable nor weak-referenceable: no cache
        return tuple(inspect.signature(fn).parameters)
    if hit is not None and hit[0] is code:
        return hit[1]
    params = tuple(inspect.signature(fn).parameters)
    try:
        _PARAMS[fn] = (code, params)
    except TypeError:
        pass
    return params


def free_names(step: Step) -> frozenset[str]:
    """Every name a step reads: its body, `--when`, `--map`, and a function's parameters."""
    names: set[str] = set()
    map_var = None
    if step.map:
        map_var, expr = parse_map(step.map, step.name)
        names |= python_names(expr, step.name, "eval")
    if step.kind == "python":
        names |= python_names(step.body, step.name)
    elif step.kind == "function" and step.fn is not None:
        names |= set(function_params(step.fn))
    elif step.body:
        names |= template_names(step.body, step.name)
    if step.when:
        names |= python_names(step.when, step.name, "eval")
    names.discard(map_var)
    names.discard(step.name)
    return frozenset(names)


class Graph:
    """Steps and the edges between them; ``deps[name]`` are a step's direct upstream steps."""

    def __init__(self, steps: Mapping[str, Step], previous: Graph | None = None):
        """``previous``: a graph of the same pipeline before a step changed; the names of the
        steps it shares (the same objects) are not parsed again, and when the change only adds
        steps that no earlier step reads, the new graph is known to be acyclic if it was."""
        self.steps = dict(steps)
        self.deps: dict[str, frozenset[str]] = {}
        self._names: dict[str, frozenset[str]] = {}  # free_names per step, computed once
        self._acyclic = False  # known to have no cycle (`check`)
        known = previous._names if previous is not None else {}
        for name, step in self.steps.items():
            names = known.get(name)
            if names is None or previous.steps[name] is not step:
                names = free_names(step)
            self._names[name] = names
            refs = names & self.steps.keys()
            for after in step.after:
                if after not in self.steps:
                    raise UnknownNameError(name, after, self.steps)
            self.deps[name] = frozenset(refs | set(step.after))
        if previous is not None and previous._acyclic:
            self._acyclic = self._only_added_leaves(previous)

    def _only_added_leaves(self, previous: Graph) -> bool:
        """Whether this graph is ``previous`` plus steps no step of ``previous`` reads or runs
        after: such a step has no way back to itself, so no cycle can pass through it."""
        if any(self.steps.get(n) is not s for n, s in previous.steps.items()):
            return False
        added = self.steps.keys() - previous.steps.keys()
        return not any(self.deps[n] & added for n in previous.steps)

    @cached_property
    def dependents(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {name: set() for name in self.steps}
        for name, deps in self.deps.items():
            for dep in deps:
                out[dep].add(name)
        return out

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(dep, name) for name in self.steps for dep in sorted(self.deps[name])]

    def external_names(self, name: str) -> frozenset[str]:
        """Names a step reads that are not steps: parameters and notebook variables."""
        names = self._names.get(name)
        if names is None:
            names = free_names(self.steps[name])
        steps = self.steps  # a membership test per name: `names - steps.keys()` copies every key
        return frozenset(n for n in names if n not in steps)

    def upstream(self, targets: Iterable[str]) -> set[str]:
        """``targets`` and everything they depend on, transitively."""
        seen: set[str] = set()
        stack = list(targets)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            if name not in self.steps:
                raise UnknownNameError("run", name, self.steps)
            seen.add(name)
            stack.extend(self.deps[name])
        return seen

    def downstream(self, sources: Iterable[str]) -> set[str]:
        """Everything that depends on ``sources``, transitively (not ``sources`` themselves)."""
        seen: set[str] = set()
        stack = [d for s in sources for d in self.dependents.get(s, ())]
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(self.dependents[name])
        return seen

    def order(self, subset: Iterable[str] | None = None) -> list[str]:
        """A topological order of ``subset`` (default: all); raises `CycleError`."""
        return [n for gen in self.generations(subset) for n in gen]

    def generations(self, subset: Iterable[str] | None = None) -> list[list[str]]:
        """Layers of steps whose dependencies all lie in earlier layers (declaration order kept)."""
        names = list(self.steps) if subset is None else [n for n in self.steps if n in set(subset)]
        members = set(names)
        indegree = {n: len(self.deps[n] & members) for n in names}
        layer = [n for n in names if indegree[n] == 0]
        layers: list[list[str]] = []
        position = {n: i for i, n in enumerate(names)}
        done = 0
        while layer:
            layers.append(layer)
            done += len(layer)
            nxt: list[str] = []
            for n in layer:
                for d in self.dependents[n]:
                    if d in members:
                        indegree[d] -= 1
                        if indegree[d] == 0:
                            nxt.append(d)
            layer = sorted(nxt, key=position.__getitem__)
        if done < len(names):
            raise CycleError(self._find_cycle([n for n in names if indegree[n] > 0]))
        return layers

    def _find_cycle(self, candidates: list[str]) -> list[str]:
        import networkx as nx

        g = nx.DiGraph()
        g.add_edges_from((d, n) for n in candidates for d in self.deps[n] if d in candidates)
        edges = nx.find_cycle(g)
        return [u for u, _ in edges]

    def check(self) -> None:
        """Raise `CycleError` if the graph has a cycle."""
        if not self._acyclic:
            self.generations()
            self._acyclic = True
