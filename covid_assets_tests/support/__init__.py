"""Support code for the tests and the benchmarks (not tests themselves): import it by its public names.

``fake_socrata``: `FakeSocrata`, a local stand-in for a Socrata domain (SODA2, SODA3 and the view
metadata) with fault injection; `Fault`; `RecordedRequest`.
"""

from covid_assets_tests.support.fake_socrata import FakeSocrata, Fault, RecordedRequest

__all__ = ["FakeSocrata", "Fault", "RecordedRequest"]
