from adapters.vertex.tests.vertex_support import google  # noqa: F401
