"""The tutorial's train_covid19.py as the tutorial wrote it, changed only where Keras 3 forces it.

From "Detecting COVID-19 in X-ray images with Keras, TensorFlow, and Deep Learning" by Adrian
Rosebrock, PyImageSearch, 16 March 2020 (pyimagesearch.com/2020/03/16/
detecting-covid-19-in-x-ray-images-with-keras-tensorflow-and-deep-learning), reproduced here,
with its comments, only as the baseline of our benchmark.

This is the baseline that bench/benchmark.py measures our train_covid19.py against. It keeps the
tutorial's algorithm and its costs: every image held in memory as float64, augmentation with
ImageDataGenerator (SciPy, one image at a time), and `model.fit` over the whole network (the
frozen VGG16 included) for the training batches and the test split, every epoch.

Changes, each forced by Keras 3 (see docs/porting.md):
- `Adam(lr=..., decay=...)` -> `Adam(learning_rate=InverseTimeDecay(...))`, the same per-step decay;
- `model.fit_generator(...)` -> `model.fit(...)`;
- `model.save(path, save_format="h5")` -> `model.save(path)` with a `.h5` name;
- `--epochs` and `--weights` so the benchmark can run it offline with any epoch count, a `.h5`
  `--model` default, and matplotlib's file-only "Agg" backend for a machine without a display.
Three changes only affect what is printed, not what is computed or timed: the debugging
`print(labels)` is dropped, `verbose=2` prints one line per epoch instead of a progress bar, and
`zero_division=0` silences scikit-learn's warning for a class the model never predicts.

Usage:
    python bench/reference_train.py --dataset DATASET --epochs 25 --weights none
"""

# import the necessary packages
import matplotlib
from imutils import paths
from sklearn.metrics import classification_report, confusion_matrix
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from tensorflow.keras.applications import VGG16
from tensorflow.keras.layers import AveragePooling2D, Dense, Dropout, Flatten, Input
from tensorflow.keras.models import Model
from tensorflow.keras.optimizers import Adam
from tensorflow.keras.optimizers.schedules import InverseTimeDecay
from tensorflow.keras.preprocessing.image import ImageDataGenerator
from tensorflow.keras.utils import to_categorical

matplotlib.use("Agg")
import argparse
import os

import cv2
import matplotlib.pyplot as plt
import numpy as np

# construct the argument parser and parse the arguments
ap = argparse.ArgumentParser()
ap.add_argument("-d", "--dataset", required=True,
    help="path to input dataset")
ap.add_argument("-p", "--plot", type=str, default="plot.png",
    help="path to output loss/accuracy plot")
ap.add_argument("-m", "--model", type=str, default="covid19.h5",
    help="path to output model")
ap.add_argument("--epochs", type=int, default=25)
ap.add_argument("--weights", default="imagenet",
    help="imagenet, none, or a path to the VGG16 no-top weights file")
args = vars(ap.parse_args())

# initialize the initial learning rate, number of epochs to train for,
# and batch size
INIT_LR = 1e-3
EPOCHS = args["epochs"]
BS = 8

# grab the list of images in our dataset directory, then initialize
# the list of data (i.e., images) and class images
print("[INFO] loading images...")
imagePaths = list(paths.list_images(args["dataset"]))
data = []
labels = []

# loop over the image paths
for imagePath in imagePaths:
    # extract the class label from the filename
    label = imagePath.split(os.path.sep)[-2]

    # load the image, swap color channels, and resize it to be a fixed
    # 224x224 pixels while ignoring aspect ratio
    image = cv2.imread(imagePath)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (224, 224))

    # update the data and labels lists, respectively
    data.append(image)
    labels.append(label)

# convert the data and labels to NumPy arrays while scaling the pixel
# intensities to the range [0, 1]
data = np.array(data) / 255.0
labels = np.array(labels)

# perform one-hot encoding on the labels
lb = LabelBinarizer()
labels = lb.fit_transform(labels)
labels = to_categorical(labels)

# partition the data into training and testing splits using 80% of
# the data for training and the remaining 20% for testing
(trainX, testX, trainY, testY) = train_test_split(data, labels,
    test_size=0.20, stratify=labels, random_state=42)

# initialize the training data augmentation object
trainAug = ImageDataGenerator(
    rotation_range=15,
    fill_mode="nearest")

# load the VGG16 network, ensuring the head FC layer sets are left
# off
weights = {"none": None}.get(args["weights"], args["weights"])
baseModel = VGG16(weights=weights, include_top=False,
    input_tensor=Input(shape=(224, 224, 3)))

# construct the head of the model that will be placed on top of the
# the base model
headModel = baseModel.output
headModel = AveragePooling2D(pool_size=(4, 4))(headModel)
headModel = Flatten(name="flatten")(headModel)
headModel = Dense(64, activation="relu")(headModel)
headModel = Dropout(0.5)(headModel)
headModel = Dense(2, activation="softmax")(headModel)

# place the head FC model on top of the base model (this will become
# the actual model we will train)
model = Model(inputs=baseModel.input, outputs=headModel)

# loop over all layers in the base model and freeze them so they will
# *not* be updated during the first training process
for layer in baseModel.layers:
    layer.trainable = False

# compile our model
print("[INFO] compiling model...")
opt = Adam(learning_rate=InverseTimeDecay(INIT_LR, decay_steps=1,
    decay_rate=INIT_LR / EPOCHS))
model.compile(loss="binary_crossentropy", optimizer=opt,
    metrics=["accuracy"])

# train the head of the network
print("[INFO] training head...")
H = model.fit(
    trainAug.flow(trainX, trainY, batch_size=BS),
    steps_per_epoch=len(trainX) // BS,
    validation_data=(testX, testY),
    validation_steps=len(testX) // BS,
    epochs=EPOCHS,
    verbose=2)

# make predictions on the testing set
print("[INFO] evaluating network...")
predIdxs = model.predict(testX, batch_size=BS)

# for each image in the testing set we need to find the index of the
# label with corresponding largest predicted probability
predIdxs = np.argmax(predIdxs, axis=1)

# show a nicely formatted classification report
print(classification_report(testY.argmax(axis=1), predIdxs,
    target_names=lb.classes_, zero_division=0))

# compute the confusion matrix and and use it to derive the raw
# accuracy, sensitivity, and specificity
cm = confusion_matrix(testY.argmax(axis=1), predIdxs)
total = sum(sum(cm))
acc = (cm[0, 0] + cm[1, 1]) / total
sensitivity = cm[0, 0] / (cm[0, 0] + cm[0, 1])
specificity = cm[1, 1] / (cm[1, 0] + cm[1, 1])

# show the confusion matrix, accuracy, sensitivity, and specificity
print(cm)
print(f"acc: {acc:.4f}")
print(f"sensitivity: {sensitivity:.4f}")
print(f"specificity: {specificity:.4f}")

# plot the training loss and accuracy
N = EPOCHS
plt.style.use("ggplot")
plt.figure()
plt.plot(np.arange(0, N), H.history["loss"], label="train_loss")
plt.plot(np.arange(0, N), H.history["val_loss"], label="val_loss")
plt.plot(np.arange(0, N), H.history["accuracy"], label="train_acc")
plt.plot(np.arange(0, N), H.history["val_accuracy"], label="val_acc")
plt.title("Training Loss and Accuracy on COVID-19 Dataset")
plt.xlabel("Epoch #")
plt.ylabel("Loss/Accuracy")
plt.legend(loc="lower left")
plt.savefig(args["plot"])

# serialize the model to disk
print("[INFO] saving COVID-19 detector model...")
model.save(args["model"])
