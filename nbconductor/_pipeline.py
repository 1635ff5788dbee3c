"""`Pipeline`: the public, IPython-free way to declare and run steps. The magics use it too."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ._config import Config, load_config
from ._errors import DefinitionError, OptionError
from ._executor import RunOptions, RunResult, Session, execute
from ._graph import Graph
from ._loop import run_sync
from ._pool import ProviderPool
from ._states import APPROVED, EDITED
from ._template import parse_map
from ._types import ON_FAIL, Rubric, Step, StepResult
from ._variants import BASE, Variant, check_variant_name, normalize_options
from .store._base import connect, default_store, resolve
from .store._sqlite import Store


class Pipeline:
    """A set of named steps and context blocks, a store, and the results of the last runs.

    >>> p = Pipeline(store=":memory:")
    >>> p.step("hello", "Say hello to {{ name }}", model="offline:demo")
    >>> p.run({"name": "Ada"})["hello"]  # doctest: +ELLIPSIS
    '[offline:demo] Say hello to Ada...'
    """

    def __init__(
        self,
        *,
        store: Store | str | os.PathLike | None = None,
        config: Config | str | os.PathLike | None = None,
        namespace: dict[str, Any] | None = None,
        root: str | os.PathLike | None = None,
        notebook: str | None = None,
    ):
        self.root = Path(root or os.getcwd())
        self.config = config if isinstance(config, Config) else load_config(config, start=self.root)
        self.steps: dict[str, Step] = {}
        self.variants: dict[str, dict[str, Variant]] = {}  # step -> name -> variant
        self.contexts: dict[str, str] = {}
        self.namespace: dict[str, Any] = namespace if namespace is not None else {}
        self.aliases: dict[str, str] = {}
        self.pool = ProviderPool(self.config, self.aliases)
        self.notebook = notebook
        self._store_arg = store
        self._store: Store | None = store if isinstance(store, Store) else None
        self.memory: dict[str, StepResult] = {}
        self.results: dict[str, StepResult] = {}
        self.last_run: RunResult | None = None
        self._graph: Graph | None = None

    # declaring -----------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            # An explicit store, then $NBCONDUCTOR_STORE (how batch rows share one), then the
            # config's `store`, then .nbconductor/store.sqlite beside the notebook.
            arg = self._store_arg
            if arg is None and not os.environ.get("NBCONDUCTOR_STORE") and self.config.store:
                arg = resolve(self.config.store, self.root)
            self._store = connect(arg if arg is not None else default_store(self.root))
        return self._store

    def add(self, step: Step) -> Step:
        """Register (or replace) a step after checking its options and the graph it makes;
        returns it. Raises `DefinitionError` (a cycle, an unknown ``--after``) and leaves the
        pipeline as it was."""
        _validate(step)
        previous = self.steps.get(step.name)
        if step.name in self.steps and self.steps[step.name].rubric and step.rubric is None:
            rubric = self.steps[step.name].rubric
            # Re-declaring the step keeps its rubric and the ladder options the rubric set.
            step = step.replace(
                rubric=rubric,
                **{
                    k: v
                    for k, v in (("retries", rubric.retries), ("on_fail", rubric.on_fail))
                    if v is not None
                },
            )
        self.steps[step.name] = step
        try:
            self.graph  # noqa: B018 - a cycle is reported now, not at run time
        except DefinitionError:
            if previous is None:
                del self.steps[step.name]
            else:
                self.steps[step.name] = previous
            raise
        return step

    def reset(self) -> None:
        """Forget every declared step, variant and context block, and this session's results
        (the store and its cache keep everything)."""
        self.steps.clear()
        self.variants.clear()
        self.contexts.clear()
        self.results.clear()
        self.last_run = None

    def accept(
        self,
        step: str,
        output: Any,
        edited: bool = False,
        *,
        item: int | None = None,
        cache_key: str | None = None,
        result_id: int | None = None,
    ) -> Any:
        """Put a reviewer's decision in place: ``output`` (``item`` of a ``--map`` step) becomes
        the step's output, here and for the cache entry ``cache_key`` (the store's result
        ``result_id`` when the session does not hold it), so downstream steps read it on their
        next run. Returns the step's new output. Raises `OptionError` for an unknown step."""
        if step not in self.steps:
            raise OptionError(_unknown(f"no step named `{step}`", step, self.steps))
        if cache_key:
            hit = self.memory.get(cache_key)
            if hit is None and result_id is not None:
                hit = self.store.result(result_id)
            if hit is not None:
                self.memory[cache_key] = dataclasses.replace(
                    hit, output=output, state=EDITED if edited else APPROVED
                )
        current = self.results.get(step)
        if current is None:
            return output
        if item is None:
            current.output = output
        else:
            current.output = [*current.output]
            current.output[item] = output
        return current.output

    def step(
        self,
        name: str,
        body: str = "",
        *,
        python: bool = False,
        image: bool = False,
        **options: Any,
    ) -> Step:
        """Declare an LLM step (``body`` is a Jinja2 template), or a Python/image step.

        Options are `Step`'s fields: model, fallbacks, contexts, system, after, json, schema,
        map, temperature, max_tokens, retries, checks, on_fail, when, tools, lazy, no_cache.
        """
        kind = "python" if python else "image" if image else "llm"
        for single, plural in (
            ("context", "contexts"),
            ("fallback", "fallbacks"),
            ("check", "checks"),
        ):
            if single in options:
                value = options.pop(single)
                options[plural] = [value] if isinstance(value, str) else list(value)
        if isinstance(options.get("after"), str):
            options["after"] = [options["after"]]
        try:
            step = Step(name=name, body=body, kind=kind, **options)
        except TypeError as exc:
            raise OptionError(f"step `{name}`: {exc}") from None
        return self.add(step)

    def variant(self, step: str, name: str, body: str | None = None, **options: Any) -> Step:
        """Declare another version of ``step``: a new body (None or empty: the step's prompt)
        and/or options (model, fallbacks, contexts, system, temperature, max_tokens, retries,
        checks, on_fail, json, tools, max_turns, no_cache). Runs nothing; returns the variant's
        step. Raises `OptionError` for an unknown step, a bad name or an option a variant
        cannot change."""
        if step not in self.steps:
            raise OptionError(_unknown(f"%%variant: no step named `{step}`", step, self.steps))
        check_variant_name(step, name)
        variant = Variant(step, name, body, normalize_options(step, name, options))
        declared = self._apply(variant)
        self.variants.setdefault(step, {})[name] = variant
        return declared

    def _apply(self, variant: Variant) -> Step:
        try:
            declared = variant.apply(self.steps[variant.step])
        except TypeError as exc:
            raise OptionError(f"variant `{variant.name}` of `{variant.step}`: {exc}") from None
        _validate(declared)
        return declared

    def variant_step(self, step: str, name: str = BASE) -> Step:
        """The step ``step`` as variant ``name`` declares it (``base``: the step itself)."""
        if step not in self.steps:
            raise OptionError(_unknown(f"no step named `{step}`", step, self.steps))
        if name == BASE:
            return self.steps[step]
        known = self.variants.get(step, {})
        if name not in known:
            raise OptionError(
                _unknown(f"step `{step}` has no variant `{name}`", name, [BASE, *known])
            )
        return self._apply(known[name])

    def promote(self, step: str, name: str) -> Step:
        """Make variant ``name`` the step: ``step`` is re-declared with the variant's body and
        options (its rubric stays) and the variant is removed; returns the new step. Raises
        `OptionError` for an unknown step or variant (``base`` is already the step)."""
        if name == BASE:
            raise OptionError(f"`base` is already the step `{step}`: promote another variant")
        declared = self.variant_step(step, name)
        self.steps[step] = declared
        del self.variants[step][name]
        return declared

    def variant_names(self, step: str) -> list[str]:
        """``base`` and the declared variants of ``step``, in declaration order."""
        return [BASE, *self.variants.get(step, {})]

    def function(self, name: str | None = None, **options: Any) -> Callable:
        """Decorator: a Python function as a step; its parameter names are its inputs."""

        def register(fn: Callable) -> Callable:
            self.add(Step(name=name or fn.__name__, kind="function", fn=fn, **options))
            return fn

        return register

    def context(
        self, name: str, text: str | None = None, *, file: str | os.PathLike | None = None
    ) -> str:
        """Store a named context block (text, or a file's contents); returns the text."""
        if file is not None:
            path = Path(file)
            if not path.is_absolute():
                path = self.root / path
            if not path.is_file():
                raise OptionError(f"context `{name}`: file {str(file)!r} not found")
            text = path.read_text()
        if text is None:
            raise OptionError(f"context `{name}` needs a body or --file PATH")
        self.contexts[name] = text.strip()
        return self.contexts[name]

    def rubric(
        self,
        step: str,
        text: str,
        *,
        judge: str | None = None,
        threshold: float = 0.8,
        retries: int | None = None,
        on_fail: str | None = None,
        max_tokens: int | None = None,
        audit: float | None = None,
    ) -> None:
        """Attach an LLM-judge gate to ``step`` (``max_tokens``: the judge's token limit;
        ``audit``: the share of passed outputs sent to review as audits, as ``--audit``)."""
        if step not in self.steps:
            raise OptionError(f"%%rubric: no step named `{step}`; declare the step first")
        if not 0 <= threshold <= 1:
            raise OptionError(f"--threshold must be between 0 and 1, got {threshold}")
        if on_fail is not None and on_fail not in ON_FAIL:
            raise OptionError(f"--on-fail must be one of {', '.join(ON_FAIL)}, got {on_fail!r}")
        from ._options import check_numbers

        check_numbers(f"%%rubric {step}", retries=retries, max_tokens=max_tokens)
        s = self.steps[step]
        changes: dict[str, Any] = {
            "rubric": Rubric(text.strip(), judge, threshold, retries, on_fail, max_tokens)
        }
        if retries is not None:
            changes["retries"] = retries
        if on_fail is not None:
            changes["on_fail"] = on_fail
        if audit is not None:
            changes["audit"] = audit
        _validate(s.replace(**changes))
        self.steps[step] = s.replace(**changes)

    def alias(self, name: str, spec: str, **options: Any) -> None:
        """Define a model alias for this pipeline (checked now). ``options``: the keys of an
        alias table (``base_url``, ``api_key_env``, ``structured``, ``concurrency``)."""
        if options:
            from pydantic import ValidationError

            from ._config import AliasSpec

            try:
                spec = AliasSpec(model=spec, **options)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise OptionError(f"alias {name}: {where}: {err['msg']}") from None
        self.aliases[name] = spec
        try:
            self.pool.resolve(name)
        except OptionError:
            del self.aliases[name]
            raise

    @property
    def graph(self) -> Graph:
        """The current step graph (raises `DefinitionError` for a cycle or unknown --after).

        Built once and kept until a step is added, replaced or removed: building parses every
        step's template, which a cell would otherwise pay for several times.
        """
        cached = self._graph
        if (
            cached is not None
            and len(cached.steps) == len(self.steps)
            and all(cached.steps.get(name) is s for name, s in self.steps.items())
        ):
            return cached
        graph = Graph(self.steps, previous=cached)
        graph.check()
        self._graph = graph  # it holds the steps it was built from, so `is` above is sound
        return graph

    # running -------------------------------------------------------------------------------
    def run(
        self,
        params: dict[str, Any] | None = None,
        targets: Iterable[str] | None = None,
        *,
        force: bool | Iterable[str] = False,
        observer=None,
        stream: bool = False,
    ) -> RunResult:
        """Run ``targets`` (default: all steps) and their upstream; returns a `RunResult`.

        Unchanged steps come from the cache. Raises `DefinitionError` for a graph that cannot
        run and `ParameterError` (a ValueError) for a parameter name that is not an identifier,
        a keyword or a ``__dunder__``; a step's own failure is recorded in the result (see `RunResult.raise_for_status`).
        """
        return run_sync(self.arun(params, targets, force=force, observer=observer, stream=stream))

    async def arun(
        self,
        params: dict[str, Any] | None = None,
        targets: Iterable[str] | None = None,
        *,
        force: bool | Iterable[str] = False,
        observer=None,
        stream: bool = False,
    ) -> RunResult:
        """`run`, as a coroutine."""
        if params:
            from ._params import check_names

            check_names(
                params, "Pipeline.run"
            )  # a ParameterError (a ValueError) before anything runs
        graph = self.graph
        namespace = {**self.namespace, **(params or {})} if params else self.namespace
        session = Session(graph, namespace, self.contexts, self.store, self.pool, self.memory)
        force_opt = force if isinstance(force, bool) else set(force)
        result = await execute(
            session,
            list(targets) if targets else None,
            RunOptions(force_opt, observer, stream, self.notebook),
        )
        self.results.update(result.results)
        self.last_run = result
        return result

    def compare(self, step: str, rows: list[dict[str, Any]], **options: Any):
        """Run ``step``'s variants over ``rows`` side by side; returns a `Comparison` (figures,
        paired verdicts, the per-row grid), recorded in the store as an experiment. Options:
        variants, repeats, workers, progress. See `nbconductor._compare.acompare`."""
        from ._compare import compare

        return compare(self, step, rows, **options)

    def plan(
        self, params: dict[str, Any] | None = None, targets: Iterable[str] | None = None
    ) -> list[dict]:
        """What a run would do, with estimated tokens and cost; sends nothing."""
        from ._params import check_names
        from ._plan import plan

        check_names(params or {}, "Pipeline.plan")
        namespace = {**self.namespace, **(params or {})}
        return plan(self, namespace, list(targets) if targets else None)

    def close(self) -> None:
        run_sync(self.pool.aclose())
        if self._store is not None and not isinstance(self._store_arg, Store):
            self._store.close()
            self._store = None

    # notebooks -----------------------------------------------------------------------------
    @classmethod
    def from_notebook(
        cls, path: str | os.PathLike, *, run_code: bool = True, **kwargs: Any
    ) -> Pipeline:
        """Read a pipeline from an ``.ipynb`` written with the magics.

        The parameters cell and helper code cells are executed (``run_code``) so steps can
        use their names; step, context and rubric cells are declared, not run.
        """
        from ._notebook import load_pipeline

        return load_pipeline(cls, Path(path), run_code=run_code, **kwargs)


def _unknown(message: str, name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f"{message}: did you mean `{close[0]}`?"
    return f"{message} (known: {', '.join(known) or 'none'})"


def _validate(step: Step) -> None:
    if not step.name or not step.name.isidentifier():
        raise OptionError(
            f"step name {step.name!r} is not a valid Python identifier: use letters, digits and _ "
            "(e.g. %%step draft)"
        )
    if step.on_fail not in ON_FAIL:
        raise OptionError(
            f"step `{step.name}`: --on-fail must be one of {', '.join(ON_FAIL)}, got {step.on_fail!r}"
        )
    from ._options import check_numbers

    check_numbers(
        f"step `{step.name}`",
        retries=step.retries,
        max_tokens=step.max_tokens,
        temperature=step.temperature,
        max_turns=step.max_turns,
    )
    if step.audit is not None and not (
        isinstance(step.audit, (int, float)) and 0 < step.audit <= 1
    ):
        raise OptionError(
            f"step `{step.name}`: --audit must be a share in (0, 1], e.g. 0.1, got {step.audit}"
        )
    if step.map:
        parse_map(step.map, step.name)
    if step.kind in ("llm", "image"):
        from ._template import compile_template

        compile_template(step.body, step.name)
    elif step.kind == "python":
        from ._pycode import _compile

        _compile(step.body, step.name)
    if step.when:
        from ._template import python_names

        python_names(step.when, step.name, "eval")
