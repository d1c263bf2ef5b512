-- Raster outputs rayetl published (process_raster), the files they are made of and the job that
-- wrote them: unpublish_raster deletes exactly these files and links the publishing job, and a
-- replace deletes the tiles of the previous output that the new one no longer has.
CREATE TABLE IF NOT EXISTS rayetl.published_rasters (
    container     text NOT NULL,
    path          text NOT NULL,          -- the COG, or the VRT mosaic of a tiled output
    job_id        text NOT NULL,
    files         jsonb NOT NULL,         -- every file of the output, the path above last
    collection_id text NOT NULL,
    item_id       text NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (container, path)
);
