"""GoEmotions dev: two baselines anyone can check, scored with our multi-label metrics.

(a) Frequency: each of the 28 labels is predicted on its own, at random, with its frequency in
    the training set (a coin per row and label); the mean and spread over seeds, and the value
    expected from the frequencies alone, as a ratio of expectations: label k's F1
    2 n_k p_k / (n_k + N p_k) (n_k dev rows with label k, N dev rows, p_k its training
    frequency), micro-F1 the same with n_k and p_k summed over labels.
(b) Bag of words: a logistic regression per label on the tf-idf of the training text, in
    numpy only. Words: lower-cased runs of 2+ letters or digits (`\\b\\w\\w+\\b`, as
    scikit-learn's TfidfVectorizer), kept if in >= 2 training comments; tf-idf as
    TfidfVectorizer's defaults (raw counts, idf = ln((1 + N) / (1 + df)) + 1, rows scaled to
    unit L2 norm). Loss: the mean over comments of the summed binary cross-entropies, plus
    (l2 / 2) |W|^2 (bias not penalized); l2 = 1 / N_train is scikit-learn's C = 1. Minimized
    by full-batch Nesterov-accelerated gradient descent, step 1 / (Lipschitz bound), until the
    gradient's largest entry is below 1e-5 (or --max_steps). Labels kept where the
    probability is >= 0.5 and >= 0.3 (GoEmotions' paper uses 0.3).

Run from the repository root:  python -m experiments.goemotions_baselines
"""
import os
import re
import time

from absl import app, flags
import numpy as np

import metrics
import readers
import tasks

flags.DEFINE_string('goemotions_dir', os.path.join(tasks.SHARED, 'goemotions'), 'GoEmotions\' '
                    'train.tsv, dev.tsv and labels.txt.')
flags.DEFINE_integer('seeds', 5, 'Seeds of the frequency baseline.')
flags.DEFINE_float('l2', None, 'The L2 penalty; default 1 / N_train (scikit-learn\'s C = 1).')
flags.DEFINE_integer('max_steps', 3000, 'Gradient steps at most.')
args = flags.FLAGS

WORD = re.compile(r'\b\w\w+\b')


def load(goemotions_dir):
  """(train texts, train multi-hot [N, 28], dev texts, dev multi-hot, label names), read by
  the project's own readers."""
  names = readers.read_label_names(os.path.join(goemotions_dir, 'labels.txt'))
  task = tasks.file_task(os.path.join(goemotions_dir, 'train.tsv'),
                         os.path.join(goemotions_dir, 'dev.tsv'), kind='multi_label',
                         labels=names, labels_by_index=True)
  splits = []
  for split in ('train', 'validation'):
    examples = readers.read_split(task, None, split)
    texts = [example.text[len('text: '):] for example in examples]  # the comment itself
    splits += [texts, metrics.multi_hot([example.label for example in examples], len(names))]
  return (*splits, names)


def scores(labels, predictions):
  return metrics.micro_f1(labels, predictions), metrics.macro_f1(labels, predictions)


# ---------------------------------------------------------------------------------------------
# (a) Each label at random with its training frequency.
# ---------------------------------------------------------------------------------------------

def frequency_baseline(train_labels, dev_labels, seeds):
  """[(micro, macro)] per seed, and the expected (micro, macro) from the frequencies."""
  frequency = train_labels.mean(axis=0)  # [28]
  results = []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    predictions = (rng.random(dev_labels.shape) < frequency).astype(np.int32)
    results.append(scores(dev_labels, predictions))
  positives, n = dev_labels.sum(axis=0), len(dev_labels)
  label_f1 = 100 * 2 * positives * frequency / (positives + n * frequency)
  micro = 100 * 2 * positives @ frequency / (positives.sum() + n * frequency.sum())
  return results, (micro, label_f1.mean())


# ---------------------------------------------------------------------------------------------
# (b) Bag of words, logistic regression per label.
# ---------------------------------------------------------------------------------------------

def tfidf(train_texts, dev_texts, min_df=2):
  """Sparse tf-idf rows as (rows, cols, values) of each split, and the vocabulary size."""
  train_words = [WORD.findall(text.lower()) for text in train_texts]
  document_frequency = {}
  for words in train_words:
    for word in set(words):
      document_frequency[word] = document_frequency.get(word, 0) + 1
  vocab = {word: i for i, word in enumerate(sorted(w for w, df in document_frequency.items()
                                                   if df >= min_df))}
  df = np.array([document_frequency[word] for word in sorted(vocab)], np.float64)
  idf = np.log((1 + len(train_texts)) / (1 + df)) + 1
  dev_words = [WORD.findall(text.lower()) for text in dev_texts]
  return [_sparse_rows(words, vocab, idf) for words in (train_words, dev_words)], len(vocab)


def _sparse_rows(documents, vocab, idf):
  rows, cols, values = [], [], []
  for r, words in enumerate(documents):
    ids, counts = np.unique(np.array([vocab[w] for w in words if w in vocab], np.int64),
                            return_counts=True)
    weights = counts * idf[ids]
    norm = np.sqrt(np.sum(weights ** 2)) or 1.0  # a comment with no known word stays zero
    rows += [r] * len(ids)
    cols += ids.tolist()
    values += (weights / norm).tolist()
  return np.array(rows), np.array(cols), np.array(values), len(documents)


def logits(x, w, b):
  """Sparse rows x (rows, cols, values, N) and weights w [K, V], bias b [K] -> [K, N]."""
  rows, cols, values, n = x
  return np.stack([np.bincount(rows, values * w_k[cols], n) for w_k in w]) + b[:, None]


def weight_gradient(x, r, num_cols):
  """x^T r per label: r [K, N] -> [K, V]."""
  rows, cols, values, _ = x
  return np.stack([np.bincount(cols, values * r_k[rows], num_cols) for r_k in r])


def train_logistic(x, labels, num_cols, l2, max_steps, tolerance=1e-5):
  """Weights [K, V] and bias [K] minimizing mean BCE + (l2 / 2) |W|^2, by Nesterov's
  accelerated gradient; -> (w, b, steps taken, final largest gradient entry)."""
  targets = labels.T  # [K, N]
  k, n = targets.shape
  # Rows have unit norm: with the bias's 1, |(x, 1)|^2 <= 2, and a sigmoid's slope is <= 1/4,
  # so the Hessian of one label's loss is at most 2/4 + l2: step 1 / (1/2 + l2) is safe.
  step = 1.0 / (0.5 + l2)
  frequency = targets.mean(axis=1).clip(1e-6, 1 - 1e-6)
  w, b = np.zeros((k, num_cols)), np.log(frequency / (1 - frequency))  # start at the prior
  w_prev, b_prev = w, b
  for t in range(1, max_steps + 1):
    momentum = (t - 1) / (t + 2)
    w_look, b_look = w + momentum * (w - w_prev), b + momentum * (b - b_prev)
    residual = 1 / (1 + np.exp(-logits(x, w_look, b_look))) - targets  # [K, N]
    grad_w = weight_gradient(x, residual, num_cols) / n + l2 * w_look
    grad_b = residual.mean(axis=1)
    largest = max(np.abs(grad_w).max(), np.abs(grad_b).max())
    if largest < tolerance:
      break
    w_prev, b_prev = w, b
    w, b = w_look - step * grad_w, b_look - step * grad_b
  return w, b, t, largest


def main(argv):
  del argv
  start = time.time()
  train_texts, train_labels, dev_texts, dev_labels, names = load(args.goemotions_dir)
  print(f'GoEmotions: {len(train_texts)} train, {len(dev_texts)} dev comments, {len(names)} '
        f'labels; {dev_labels.sum()} dev labels ({dev_labels.sum(1).mean():.2f} a comment)')

  results, expected = frequency_baseline(train_labels, dev_labels, range(args.seeds))
  micro, macro = np.array(results).T
  print(f'(a) frequency, {args.seeds} seeds: micro-F1 {micro.mean():.1f} (sd {micro.std():.1f})'
        f' macro-F1 {macro.mean():.1f} (sd {macro.std():.1f}); expected {expected[0]:.1f} and '
        f'{expected[1]:.1f}')

  (x_train, x_dev), num_cols = tfidf(train_texts, dev_texts)
  l2 = args.l2 if args.l2 is not None else 1 / len(train_texts)
  w, b, steps, largest = train_logistic(x_train, train_labels, num_cols, l2, args.max_steps)
  print(f'(b) bag of words: {num_cols} words, {len(x_train[0])} train non-zeros; l2 {l2:.3g}; '
        f'{steps} steps, largest gradient entry {largest:.1e}')
  probabilities = 1 / (1 + np.exp(-logits(x_dev, w, b).T))  # [N, K]
  for threshold in (0.5, 0.3):
    predictions = (probabilities >= threshold).astype(np.int32)
    micro, macro = scores(dev_labels, predictions)
    print(f'    threshold {threshold}: micro-F1 {micro:.1f} macro-F1 {macro:.1f}')
  print(f'wall time {time.time() - start:.0f} s')


if __name__ == '__main__':
  app.run(main)
