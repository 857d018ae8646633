"""Print the README's model table from the registry (parameter counts via jax.eval_shape).

python -m experiments.model_table > /tmp/table.md
"""

from jaxcnn import models


def main():
    print("| model | parameters | reference | default input | paper |")
    print("|---|---:|---|---|---|")
    for name in models.list_models():
        info = models.model_info(name)
        counted = models.count_params(name)
        assert counted == info.params, (name, counted, info.params)
        h, w, c = info.input_size
        paper = info.paper.split(".")[0] if info.paper else ""
        print(f"| `{name}` | {counted:,} | {info.reference} | {h}x{w}x{c} | {paper} |")


if __name__ == "__main__":
    main()
