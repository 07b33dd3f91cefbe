"""Push a trained CoLLM (model + processor + code + model card + sentence-transformers files) to the hub.

    python examples/push_to_hub.py --model collm-quickstart/model --repo-id me/collm-quickstart
    python examples/push_to_hub.py --model collm-quickstart/model --repo-id me/collm-quickstart --dry-run upload/

`--dry-run DIR` writes exactly the files that would be uploaded into DIR and uploads nothing. The code files
travel with the weights (`register_for_auto_class`), so the repo loads with
`AutoModel.from_pretrained(repo_id, trust_remote_code=True)`. `--metrics` takes a quickstart `metrics.json` (or
any {"benchmarks": {name: {method: {metric: value}}}} / {name: {metric: value}} file) to render the card's
model-index. The logic lives in `collm_hf.utils.hub_upload`. A missing folder, a busy --dry-run folder or a
failed upload prints one line and exits with status 2.
"""

import json
import sys

from collm_hf.apps.cli import UsageError, require_path, run_script


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="a folder written by save_pretrained (model and processor)")
    parser.add_argument("--repo-id", required=True, help="the hub model repo, e.g. me/collm-quickstart")
    parser.add_argument("--dry-run", metavar="DIR", default=None, help="write the upload into DIR, upload nothing")
    parser.add_argument("--metrics", default=None, help="metrics JSON for the card's model-index")
    parser.add_argument("--method", default="collm", help="which method's metrics of a quickstart metrics.json")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--token", default=None, help="hub token (default: the logged-in one)")


def read_metrics(path: str, method: str = "collm") -> dict:
    """{benchmark: {metric: value}} from a quickstart metrics.json or a plain {benchmark: {metric: value}} file."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    benchmarks = data.get("benchmarks", data)
    out = {}
    for name, values in benchmarks.items():
        if isinstance(values, dict) and method in values and isinstance(values[method], dict):
            values = values[method]
        out[name] = values
    return out


def push(args) -> int:
    from collm_hf.utils.hub_upload import dry_run, push_model_to_hub

    require_path(args.model, "--model", "folder")
    metrics = None
    if args.metrics:
        require_path(args.metrics, "--metrics", "file")
        try:
            metrics = read_metrics(args.metrics, args.method)
        except (ValueError, AttributeError) as error:
            raise UsageError(f"--metrics {args.metrics}: not a metrics JSON object ({error})") from error
    if args.dry_run:
        files = dry_run(args.model, args.dry_run, repo_id=args.repo_id, metrics=metrics)
        print(f"Dry run: {len(files)} files in {args.dry_run} would be uploaded to {args.repo_id}:")
        for name in files:
            print(f"  {name}")
        return 0
    url = push_model_to_hub(args.model, args.repo_id, private=args.private or None, token=args.token, metrics=metrics)
    print(f"Pushed to {url}")
    return 0


def main(argv=None) -> int:
    return run_script("push_to_hub.py", add_arguments, push, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
