"""Export and batch: the papermill job, the in-process engine, run, batch, workers and Dask."""
