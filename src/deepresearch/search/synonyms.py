"""Clinical terms and their consumer-health words, shared by search and ranking."""

# Clinical terms and the words consumer-health text (MedQuAD, MedlinePlus) uses for
# them: "How is hypertension treated?" is answered there under "high blood pressure".
LAY_TERMS: dict[str, str] = {
    "hypertension": "high blood pressure",
    "hypotension": "low blood pressure",
    "hyperlipidemia": "high cholesterol",
    "hypercholesterolemia": "high cholesterol",
    "myocardial infarction": "heart attack",
    "cerebrovascular accident": "stroke",
    "hyperglycemia": "high blood sugar",
    "hypoglycemia": "low blood sugar",
    "renal failure": "kidney failure",
    "pyrexia": "fever",
    "emesis": "vomiting",
    "cephalalgia": "headache",
}
