"""The three figures a training run writes beside its model, in the tutorial's ggplot style:
the training loss and accuracy per epoch (the tutorial's plot.png), the ROC curve on the test
split (roc.png) and the reliability diagram of every labelled set it was tested on
(calibration.png). Matplotlib is imported at first use: --help answers without it."""

import numpy as np

from .calibration import expected_calibration_error


def save_figure(figure, path):
    """Write `figure` to `path` (PNG) and free it."""
    import matplotlib.pyplot as plt

    figure.savefig(path, format="png")
    plt.close(figure)


def plot_history(history):
    """The train/val loss and accuracy per epoch, in the tutorial's style, as a figure."""
    import matplotlib.pyplot as plt

    N = len(history["loss"])
    with plt.style.context("ggplot"):
        fig, ax = plt.subplots()
        ax.plot(np.arange(0, N), history["loss"], label="train_loss")
        ax.plot(np.arange(0, N), history["val_loss"], label="val_loss")
        ax.plot(np.arange(0, N), history["accuracy"], label="train_acc")
        ax.plot(np.arange(0, N), history["val_accuracy"], label="val_acc")
        ax.set_title("Training Loss and Accuracy on COVID-19 Dataset")
        ax.set_xlabel("Epoch #")
        ax.set_ylabel("Loss/Accuracy")
        ax.legend(loc="lower left")
    return fig


def plot_roc(true_classes, probabilities, class_names, positive=0):
    """The ROC curve on the test split (the positive class's with two classes, one curve per
    class against the rest with more), with scikit-learn's RocCurveDisplay, which puts each
    curve's AUC in the legend."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay

    shown_classes = ({positive: class_names[positive]} if len(class_names) == 2
                     else dict(enumerate(class_names)))
    with plt.style.context("ggplot"):
        fig, ax = plt.subplots()
        for n, (c, name) in enumerate(shown_classes.items()):
            RocCurveDisplay.from_predictions(
                true_classes == c, probabilities[:, c], ax=ax,
                name=f"{name} vs rest" if len(shown_classes) > 1 else name,
                plot_chance_level=(n == len(shown_classes) - 1))
        ax.set_title("ROC curve on the test split")
        ax.set_xlabel("False positive rate (1 - specificity)")
        ax.set_ylabel("True positive rate (sensitivity)")
        ax.legend(loc="lower right")
    return fig


def plot_calibration(sets, class_names, positive=0):
    """The reliability diagram: for each set ({name: (true classes, probabilities)}), the mean
    probability against how often the class was true, per bin; with two classes the positive
    class's, with more one panel per class against the rest."""
    import matplotlib.pyplot as plt

    shown_classes = [positive] if len(class_names) == 2 else list(range(len(class_names)))
    with plt.style.context("ggplot"):
        fig, axes = plt.subplots(1, len(shown_classes), figsize=(5 * len(shown_classes), 5),
                                 squeeze=False)
        for ax, c in zip(axes[0], shown_classes):
            ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="calibrated")
            for name, (true_classes, probabilities) in sets.items():
                _, bins = expected_calibration_error(np.asarray(true_classes) == c,
                                                     np.asarray(probabilities)[:, c])
                kept = [row for row in bins if row[1]]
                ax.plot([row[2] for row in kept], [row[3] for row in kept], marker="o",
                        label=f"{name} ({len(true_classes)})")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel(f"mean predicted probability of {class_names[c]}")
            ax.set_ylabel(f"share that were {class_names[c]}")
            ax.set_title(f"Calibration: {class_names[c]}"
                         + ("" if len(class_names) == 2 else " against the rest"))
            ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
    return fig
