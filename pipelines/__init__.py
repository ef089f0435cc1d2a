"""One module per job: convert, manifest, verify, dataset, export, aggregate. The only place that reads PipelineOptions."""
