"""One module per job: convert (more to come). The only place that reads PipelineOptions."""
