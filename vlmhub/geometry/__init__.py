"""Pure image geometry shared by the processors and the models (imports nothing else of vlmhub).

The processor and the model must agree on how many visual tokens an image gives; both compute it here.
"""
