"""covid19xray.plots: the figures a training run writes."""

from covid19xray.plots import plot_history


def test_history_plot_has_the_tutorials_four_curves():
    import matplotlib.pyplot as plt

    history = {"loss": [0.7, 0.6, 0.5], "val_loss": [0.69, 0.65, 0.6],
               "accuracy": [0.5, 0.6, 0.7], "val_accuracy": [0.5, 0.5, 0.9]}
    figure = plot_history(history)
    axis = figure.axes[0]
    assert [line.get_label() for line in axis.lines] == [
        "train_loss", "val_loss", "train_acc", "val_acc"]
    assert [list(line.get_ydata()) for line in axis.lines] == [
        history["loss"], history["val_loss"], history["accuracy"], history["val_accuracy"]]
    assert axis.get_title() == "Training Loss and Accuracy on COVID-19 Dataset"
    plt.close(figure)
