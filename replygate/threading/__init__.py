"""The threading engine: pure mail logic (tokens, parsing, classification,
extraction) and the worker that files queued mail into threads."""
