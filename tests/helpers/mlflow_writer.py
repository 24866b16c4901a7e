"""One of several processes writing to one MLflow store at once, as parallel sweep cells do:
`python mlflow_writer.py GO NAME RUNS STEPS WRITERS`. It imports mlflow, says it is ready (a file
GO.NAME), and waits for GO, a JSON file {"uri", "experiment"} that the test writes once the store
exists, and for the other writers; then all make RUNS runs each and log STEPS steps of metrics to
each, one call a step, and end them. Any failure ("database is locked") exits non-zero."""
import json
import sys
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

go, name, runs, steps, writers = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
Path(f"{go}.{name}").touch()
deadline = time.monotonic() + 300
while not go.is_file() or len(list(go.parent.glob(f"{go.name}.*"))) < writers:  # start together: the writes overlap
    if time.monotonic() > deadline:
        sys.exit("never told to start")
    time.sleep(0.01)
where = json.loads(go.read_text())
client = MlflowClient(where["uri"])
for r in range(runs):
    run = client.create_run(where["experiment"], run_name=f"{name}-{r}", tags={"writer": name})
    client.log_batch(run.info.run_id, params=[Param("writer", name), Param("run", str(r))])
    for step in range(steps):
        now = int(time.time() * 1000)
        client.log_batch(run.info.run_id, metrics=[Metric("loss", 1.0 / (step + 1), now, step),
                                                   Metric("acc", step / steps, now, step)])
    client.set_terminated(run.info.run_id, "FINISHED")
print("ok")
