"""Quality gates: rule checks, schemas and the LLM judge, evaluated in one place."""
