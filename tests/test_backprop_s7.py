"""Seed S7: the hand-worked backpropagation example, done right.

3 inputs - 2 hidden sigmoid - 2 outputs sigmoid, squared error E = 1/2 * sum((y - t)^2),
one gradient-descent step with lr 0.1. The seed gives no target; we use t = [0, 1]. The
article's arithmetic was wrong (it has W0.x + b0 = [1.2, 3.2]); the numbers recorded
below were computed in float64 by the hand-written backward pass; jax.grad (float32)
must agree with it to 1e-6.
"""

import jax
import jax.numpy as jnp
import numpy as np

W0 = np.array([[.1, .2, .3], [.4, .5, .6]])
B0 = np.array([.1, .2])
W1 = np.array([[.1, .2], [.3, .4]])
B1 = np.array([.1, .2])
X = np.array([1., 2., 3.])
T = np.array([0., 1.])
LR = 0.1


def sigmoid(z):
  return 1 / (1 + np.exp(-z))


def forward(params, x):
  w0, b0, w1, b1 = params
  h = jax.nn.sigmoid(w0 @ x + b0)
  return jax.nn.sigmoid(w1 @ h + b1)


def loss(params, x, t):
  return 0.5 * jnp.sum((forward(params, x) - t) ** 2)


def hand_backward(x, t):
  """The chain rule written out, layer by layer."""
  z0 = W0 @ x + B0
  h = sigmoid(z0)
  z1 = W1 @ h + B1
  y = sigmoid(z1)
  delta1 = (y - t) * y * (1 - y)            # dE/dz1
  delta0 = (W1.T @ delta1) * h * (1 - h)    # dE/dz0
  return z0, h, y, (np.outer(delta0, x), delta0, np.outer(delta1, h), delta1)


def test_forward_values_recorded():
  z0, h, y, _ = hand_backward(X, T)
  np.testing.assert_allclose(z0, [1.5, 3.4], atol=1e-12)   # not [1.2, 3.2]
  np.testing.assert_allclose(h, [0.8175744762, 0.9677045353], atol=1e-9)
  np.testing.assert_allclose(y, [0.5927386246, 0.6968524737], atol=1e-9)
  assert np.isclose(0.5 * np.sum((y - T) ** 2), 0.2216187499, atol=1e-9)


def test_jax_grad_matches_hand_backward():
  _, _, _, hand = hand_backward(X, T)
  auto = jax.grad(loss)((W0, B0, W1, B1), X, T)
  for a, h in zip(auto, hand):
    np.testing.assert_allclose(np.asarray(a), h, atol=1e-6)


def test_one_gradient_step_recorded():
  _, _, _, (gw0, gb0, gw1, gb1) = hand_backward(X, T)
  np.testing.assert_allclose(gw1, [[0.1169841448, 0.1384657799],
                                   [-0.0523571777, -0.0619714531]], atol=1e-9)
  np.testing.assert_allclose(gb1, [0.1430868358, -0.0640396432], atol=1e-9)
  np.testing.assert_allclose(gw0, [[-7.3129628243e-04, -1.4625925649e-03, -2.1938888473e-03],
                                   [9.3804590494e-05, 1.8760918099e-04, 2.8141377148e-04]],
                             atol=1e-12)
  np.testing.assert_allclose(W1 - LR * gw1, [[0.0883015855, 0.1861534220],
                                             [0.3052357178, 0.4061971453]], atol=1e-9)
  np.testing.assert_allclose(gw0[:, 0], gb0, atol=1e-12)   # x[0] = 1
  new_loss = loss((W0 - LR * gw0, B0 - LR * gb0, W1 - LR * gw1, B1 - LR * gb1), X, T)
  assert float(new_loss) < 0.2216187499 - 1e-3   # the step goes downhill
