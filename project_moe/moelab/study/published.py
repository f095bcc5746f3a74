"""Published numbers the study sets its own results beside. They are quoted from the papers,
never computed here; every other number of the notebook and the report comes from results/.

Rokah, Veress, Caulk, Sharan 2026, "Mixture-of-Experts Models in Vision: Routing, Optimization,
and Generalization" (arXiv 2601.15021): CIFAR-10, ResNet-18 backbone with a dense, soft-MoE or
sparse-MoE (noisy top-2) classifier head, 50 epochs of SGD, one seed. Test accuracy in %, and the
Hessian's largest eigenvalue and trace of the training loss (train) and the eigenvalue on test
data (test).

Sentence polarity (Pang and Lee 2005; "MR": 5,331 positive and 5,331 negative Rotten Tomatoes
snippets, 10-fold cross-validation), test accuracy in %: Wang and Manning 2012, "Baselines and
Bigrams" (ACL), their results table as the authors' code repository (sidaw/nbsvm, src/results.txt)
prints it; Kim 2014, "Convolutional Neural Networks for Sentence Classification" (EMNLP), the CNN
with fine-tuned word2vec vectors pre-trained on 100 billion words of news.

MNIST superpixel graphs (Dwivedi et al. 2020, "Benchmarking Graph Neural Networks"): 55,000 training,
5,000 validation and 10,000 test graphs of at most 75 SLIC superpixels, 8 nearest neighbours; models
of about 100k parameters trained with Adam until the learning rate decays to 1e-5 (at most 12 hours),
4 seeds; test accuracy in % (mean and standard deviation) from the leaderboard of the authors'
repository (graphdeeplearning/benchmarking-gnns, docs/07_leaderboards.md).
"""
import pandas as pd

ROKAH_2026_HEADS = pd.DataFrame(
    {"label": ["dense", "soft", "noisy-top2"],
     "paper_test_acc": [86.44, 87.23, 87.17],
     "paper_top_eigenvalue_train": [2.38, 1.10, 0.72],
     "paper_trace_train": [22.75, 19.86, 15.23],
     "paper_top_eigenvalue_test": [63.87, 92.22, 68.71]})

SENTENCE_POLARITY = pd.DataFrame(
    {"key": ["nbsvm-bigram", "mnb-bigram", "svm-bigram", "cnn-word2vec"],
     "model": ["NBSVM, word 1-2-grams", "multinomial naive Bayes, 1-2-grams", "SVM, 1-2-grams", "CNN, word2vec"],
     "source": ["Wang and Manning 2012"] * 3 + ["Kim 2014"],
     "paper_test_acc": [79.38, 79.03, 77.72, 81.5]})

DWIVEDI_2020_MNIST_SUPERPIXELS = pd.DataFrame(
    {"key": ["gatedgcn", "graphsage", "gin", "gat", "gcn"],
     "model": ["GatedGCN", "GraphSage", "GIN", "GAT", "GCN"],
     "params": [104217, 104337, 105434, 110400, 101365],
     "paper_test_acc": [97.340, 97.312, 96.485, 95.535, 90.705],
     "paper_test_acc_std": [0.143, 0.097, 0.252, 0.205, 0.218]})
