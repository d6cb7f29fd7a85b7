"""Dataset declarations: one folder per dataset, its `defs.yaml` a `SocrataDataset` (see covid_assets/datasets)."""
