from gateway.testing.fixtures import *  # noqa: F403
