from adapters.bedrock.tests.bedrock_support import aws, bedrock_servers  # noqa: F401
