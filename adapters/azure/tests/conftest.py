from adapters.azure.tests.azure_support import entra, resources, start_gateway  # noqa: F401
