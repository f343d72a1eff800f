"""Development tooling: the world builder and the emulated organisation, the CloudFormation deployment of the
shipped templates, the sandbox, the demo, the fault gateway, throwaway servers and the cluster harness. Never
part of a deployment: nothing under include/ imports it (an import-linter contract), docker-compose.yaml
never mounts it and no image copies it (tests/deploy).
"""
