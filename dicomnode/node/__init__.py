"""The node: the job runner, the pipeline of stages, the service, the CLI, the status page and the export."""
