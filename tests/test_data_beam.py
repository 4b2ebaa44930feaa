"""The Beam build (DirectRunner, 2 worker processes) writes the single-process build's examples and report.

Needs apache-beam, which lives in its own environment (the ``beam`` extra:
it takes protobuf 6 / pillow 12); ``.ci/run`` runs these tests there.
"""

import glob
import os

import pytest

pytest.importorskip("apache_beam")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from geor_jax.data import builder  # noqa: E402
from tests import test_data_build_paths as paths  # noqa: E402

pytestmark = pytest.mark.beam
DIRECT_2_PROCESSES = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _beam_coordinates(records_dir):
    lines = []
    for path in sorted(glob.glob(os.path.join(records_dir, "train.coordinates*.csv"))):
        with open(path) as f:
            assert next(f).strip() == "id,lat,lon"
            lines += [line.rstrip("\n").split(",") for line in f]
    return {key: (float(lat), float(lon)) for key, lat, lon in lines}


def test_beam_build_writes_the_single_process_examples(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    paths.write_messy_collection(str(manual))
    single_dir, single = builder.build_records("mp16_pro", str(manual), str(tmp_path / "single"), num_workers=0,
                                               **paths.LIMITS)
    beam_dir, report = builder.build_records("mp16_pro", str(manual), str(tmp_path / "beam"), beam_scan_parts=3,
                                             beam_options=PipelineOptions(DIRECT_2_PROCESSES), **paths.LIMITS)
    expected = paths.records_of(single_dir)
    assert paths.records_of(beam_dir) == expected
    assert paths.report_counts(report) == paths.report_counts(single)
    assert _beam_coordinates(beam_dir) == {key: (r["lat"], r["lon"]) for key, r in expected.items()}
    assert os.path.isfile(os.path.join(beam_dir, builder.REPORT_NAME))


def test_beam_build_past_the_limits_publishes_nothing(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    paths.write_messy_collection(str(manual))
    data_dir = tmp_path / "beam"
    with pytest.raises(builder.BadRowsError, match="too many bad rows: 6 of 28 malformed"):
        builder.build_records("mp16_pro", str(manual), str(data_dir), beam_scan_parts=2,
                              beam_options=PipelineOptions(DIRECT_2_PROCESSES))
    config_dir = data_dir / "geo_cor_records" / "mp16_pro"
    assert not (config_dir / "1.1.0" / "dataset_info.json").exists()
    assert (config_dir / "build_report.failed.json").exists()
