"""Import TensorFlow before RLlib does.

RLlib's `try_import_tf()` switches TensorFlow to v1 graph mode when it is the first to
import it, and Keras 3 then cannot build or save models. Importing TensorFlow first keeps
eager mode. If RLlib got there first anyway, eager mode is switched back on here, which
works as long as Keras has not been imported yet.
"""

try:
    import tensorflow as tf
except ImportError:  # exports without TF formats still work
    tf = None

if tf is not None and not tf.executing_eagerly():
    tf.compat.v1.enable_v2_behavior()
