from adapters.vertex.tests.vertex_support import google  # noqa: F401
from gateway.testing.fixtures import *  # noqa: F403
