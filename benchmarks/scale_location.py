"""The code location of measurement 8: the declared synthetic dataset (benchmarks/scale/defs.yaml) and
the project's resources, built exactly as the SocrataDataset component builds a defs.yaml."""

from pathlib import Path

from dagster import Definitions, in_process_executor

from covid_assets.datasets.component import dataset_definitions
from covid_assets.datasets.declaration import load_declaration
from covid_assets.resources import build_resources

spec = load_declaration(Path(__file__).parent / "scale" / "defs.yaml")
defs = Definitions.merge(dataset_definitions(spec), Definitions(resources=build_resources(), executor=in_process_executor))
