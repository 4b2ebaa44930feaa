"""Build Chain-of-Region TFDS records (ArrayRecord) from a public photo collection, or the demo world.

    # MP16-Pro as downloaded (metadata/MP16_Pro_filtered.csv, metadata/tar_index.pkl, mp-16-images00..18)
    python tools/build_dataset.py --layout=mp16_pro --manual_dir=/data/mp16 \
        --data_dir=/data/records --max_long_side=512
    # IM2GPS3K: im2gps3k_places365.csv + im2gps3ktest.zip in /data/im2gps3k
    python tools/build_dataset.py --layout=im2gps3k --manual_dir=/data/im2gps3k --data_dir=/data/records
    # MP16-Hard: the records of mine_hard.py's ids, where the GRPO configs read them
    python tools/build_dataset.py --from_records=/data/records/geo_cor_records/mp16_pro_max512/1.1.0 \
        --ids=mp16_hard_ids.txt --config_name=mp16_hard --data_dir=/data/records
    # The offline demo world (300 procedural images, seconds)
    python tools/build_dataset.py --demo --data_dir=/tmp/georjax_demo

Images are read in place from folders, tars (one, many, or split into
chunks) and zips. ``--num_workers`` processes decode images (default: every
core); ``--shard=i/n`` builds one shard of n on this host (resumable; the run
finishing the last shard merges); ``--beam_pipeline_options`` runs the build
on Apache Beam (needs the beam extra's venv, ``tools/bootstrap.sh beam``).
Prints a tqdm progress bar while examples are generated, then the build
report (rows written, rows skipped per reason with examples), saved as
build_report.json next to the records. A CSV whose header lacks the layout's
columns, an archive that cannot be read in place, no row written, more than
--max_bad_fraction of the rows malformed or --max_missing_fraction without
an image, or swapped latitude/longitude columns: one "build failed: ..."
line on stderr and exit code 2.
"""

import os
import sys
import time

from absl import app, flags

from geor_jax.data import archives, builder, demo_world, layouts, tokenizer
from geor_jax.run import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("layout", "generic", sorted(layouts.LAYOUTS), "On-disk layout of the collection.")
flags.DEFINE_string("manual_dir", None, "Folder holding the metadata CSV and the images (folders or archives).")
flags.DEFINE_string("data_dir", None, "Where the records go (<data_dir>/geo_cor_records/<config>/1.1.0).")
flags.DEFINE_string("config_name", None, "Config (folder) name; default: layout plus non-default options.")
flags.DEFINE_string("csv_path", None, "Metadata CSV (default: the layout's usual file names).")
flags.DEFINE_string("image_dir", None, "Image folder, or folder inside the archives (default: the layout's).")
flags.DEFINE_list("image_archives", [], "Globs of tar/zip files holding the images (read in place).")
flags.DEFINE_list("image_chunks", [], "Globs whose sorted matches are the byte chunks of one tar (read as one).")
flags.DEFINE_string("tar_index", None, "A shipped tar index (dict name -> TarInfo pickle) to read, not rebuild.")
flags.DEFINE_string("id_column", None, "CSV column of the image id (default: the layout's).")
flags.DEFINE_string("image_column", None, "CSV column of the image reference (default: the layout's).")
flags.DEFINE_string("lat_column", None, "CSV column of the latitude (default: the layout's).")
flags.DEFINE_string("lon_column", None, "CSV column of the longitude (default: the layout's).")
flags.DEFINE_string("split", None, "Split name (default: train; test for the benchmarks).")
flags.DEFINE_integer("max_long_side", None, "Shrink images whose long side is larger (keeps records small).")
flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of re-encoded images.")
flags.DEFINE_float("max_bad_fraction", 0.01, "Fail if more than this fraction of rows is malformed.")
flags.DEFINE_float("max_missing_fraction", None, "Fail if more than this fraction of rows has no image "
                   "(default: the layout's; 0.15 for mp16_pro, else 0.01).")
flags.DEFINE_string("ids", None, "Keep only the ids listed in this file, one per line (e.g. mine_hard.py's).")
flags.DEFINE_string("from_records", None, "With --ids: filter these built records instead of reading a CSV.")
flags.DEFINE_integer("num_workers", None, "Processes decoding images (0: this process; default: every core).")
flags.DEFINE_integer("chunk_size", 2048, "Rows reverse-geocoded per batch.")
flags.DEFINE_string("shard", None, "i/n: build shard i of n on this host (resumable); the last shard merges.")
flags.DEFINE_string("beam_pipeline_options", None, "Build with Apache Beam: comma-separated pipeline options, "
                    "e.g. runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing.")
flags.DEFINE_bool("demo", False, "Generate and build the offline demo world instead.")
flags.DEFINE_integer("demo_images", 300, "Demo world size.")
flags.DEFINE_integer("demo_seed", 0, "Demo world seed.")
flags.DEFINE_integer("demo_vocab_size", 8192, "With --demo: vocab of the demo BPE tokenizer written to "
                     "<data_dir>/demo_tokenizer (0 skips it).")
flags.mark_flag_as_required("data_dir")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n), checked (UsageError names the flag)."""
    if not text:
        return None
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise app.UsageError(f"--shard={text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise app.UsageError(f"--shard={text!r}: need 0 <= i < n")
    return i, n


def beam_options(text: str | None):
    """Beam PipelineOptions from ``--beam_pipeline_options`` (None without it)."""
    if not text:
        return None
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions([f"--{option.strip()}" for option in text.split(",") if option.strip()])


def main(argv):
    """Build the records (or the demo world) and report."""
    del argv
    start = time.perf_counter()
    try:
        if FLAGS.demo:
            records_dir, report = demo_world.build_demo_records(FLAGS.data_dir, num_images=FLAGS.demo_images,
                                                                seed=FLAGS.demo_seed)
            print(f"demo world records: {time.perf_counter() - start:.1f} s")
            tokenizer_dir = os.path.join(FLAGS.data_dir, "demo_tokenizer")
            if FLAGS.demo_vocab_size and not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
                tok = tokenizer.build_demo_tokenizer(tokenizer_dir, vocab_size=FLAGS.demo_vocab_size)
                print(f"demo tokenizer: {tokenizer_dir} (vocab {tok.vocab_size}, "
                      f"{tok.special_ids.model_config_overrides()})")
        else:
            if not FLAGS.manual_dir and not FLAGS.from_records:
                raise app.UsageError("--manual_dir is required (or --demo, or --from_records with --ids)")
            if FLAGS.from_records and not FLAGS.ids:
                raise app.UsageError("--from_records needs --ids (the ids to keep, one per line)")
            if FLAGS.shard and FLAGS.beam_pipeline_options:
                raise app.UsageError("--shard and --beam_pipeline_options are two ways to split a build: use one")
            records_dir, report = builder.build_records(
                FLAGS.layout, FLAGS.manual_dir, FLAGS.data_dir, config_name=FLAGS.config_name, split=FLAGS.split,
                max_long_side=FLAGS.max_long_side, jpeg_quality=FLAGS.jpeg_quality, shard=parse_shard(FLAGS.shard),
                beam_options=beam_options(FLAGS.beam_pipeline_options), csv_path=FLAGS.csv_path,
                image_dir=FLAGS.image_dir, image_archives=tuple(FLAGS.image_archives),
                image_chunks=tuple(FLAGS.image_chunks), tar_index=FLAGS.tar_index, id_column=FLAGS.id_column,
                image_column=FLAGS.image_column, lat_column=FLAGS.lat_column, lon_column=FLAGS.lon_column,
                ids_path=FLAGS.ids, from_records=FLAGS.from_records, max_bad_fraction=FLAGS.max_bad_fraction,
                max_missing_fraction=FLAGS.max_missing_fraction, num_workers=FLAGS.num_workers,
                chunk_size=FLAGS.chunk_size)
    except (builder.BadRowsError, layouts.LayoutError, archives.ArchiveError) as error:
        print(f"build failed: {error}", file=sys.stderr)
        sys.exit(2)
    if report is None:
        print(f"records already built in {records_dir} (see its {builder.REPORT_NAME})")
    print(f"records: {records_dir} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    cli.main(main)
