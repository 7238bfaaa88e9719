from adapters.anthropic.tests.anthropic_support import fake, provider, upstream  # noqa: F401
